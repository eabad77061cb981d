import Foundation
import Glibc

/// The bookkeeping of one storage folder, kept beside it rather than inside it.
///
/// A task or persistent folder `<name>` in the per-user folder has a sidecar folder `.<name>.parallelvm`
/// holding its owner record (`owner`) and its lease file (`lease`). Keeping them outside the user's
/// folder means a mirrored file may have any name, and the task never sees (or deletes) them.
enum Sidecar {
    /// Suffix of a sidecar folder's name.
    static let suffix = ".parallelvm"
    /// Name of the owner record inside a sidecar.
    static let ownerName = "owner"
    /// Name of the lease file inside a sidecar.
    static let leaseName = "lease"
    /// Marker between a folder's name and the random part of its staging folders' names.
    static let stagingMarker = ".staging-"

    /// `.<name>.parallelvm`.
    static func name(for folder: String) -> String { ".\(folder)\(suffix)" }

    /// `.<name>.staging-<random>`: where a folder's content is built before it is renamed into place.
    static func stagingName(for folder: String) -> String {
        ".\(folder)\(stagingMarker)\(String(UInt64.random(in: 0...UInt64.max), radix: 16))"
    }

    /// The storage folder an entry of the per-user folder belongs to: a sidecar or a staging folder
    /// belongs to the folder it is named after, anything else to itself.
    static func folderName(ofEntry entry: String) -> String {
        guard entry.hasPrefix(".") else { return entry }
        if entry.hasSuffix(suffix), entry.count > suffix.count + 1 {
            return String(entry.dropFirst().dropLast(suffix.count))
        }
        if let marker = entry.range(of: stagingMarker, options: .backwards),
            marker.lowerBound > entry.index(after: entry.startIndex)
        {
            return String(entry[entry.index(after: entry.startIndex)..<marker.lowerBound])
        }
        return entry
    }

    /// Creates (when missing) and opens the sidecar of `folder` inside the open per-user folder.
    static func open(for folder: String, in userFd: Int32, userFolder: String, create: Bool) throws -> Int32 {
        let name = name(for: folder)
        let path = PathUtil.join(userFolder, name)
        if create {
            let made = SystemCall.value("mkdirat") { mkdirat(userFd, name, 0o700) }
            if !made.failed(with: EEXIST) { try made.get("created", path: path, subject: "storage bookkeeping folder") }
        }
        return try SystemCall.value("openat") { openat(userFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            .get("opened", path: path, subject: "storage bookkeeping folder")
    }
}

/// The identity of a process: host, PID, start time and boot ID (the fields a spawner sends, too).
package typealias ProcessIdentity = SpawnerIdentity

/// Who made a storage folder: the worker process on this host that made it, and the spawner run and VM
/// it made it for.
///
/// The worker's identity decides whether the folder is stale (its maker is provably gone); the spawner's
/// and the VM index decide whether a persistent folder may be reused for a task.
struct OwnerRecord: Hashable {
    /// The process that made the folder, on the folder's host.
    var maker: ProcessIdentity
    /// The spawner run the folder was made for.
    var spawner: SpawnerIdentity
    /// The VM object of that spawner.
    var vmIndex: Int

    /// One `key=value` per line.
    var text: String {
        "host=\(maker.host)\npid=\(maker.pid)\nstartTime=\(maker.startTime)\nbootID=\(maker.bootID)\n"
            + "spawnerHost=\(spawner.host)\nspawnerPID=\(spawner.pid)\nspawnerStartTime=\(spawner.startTime)\n"
            + "spawnerBootID=\(spawner.bootID)\nvmIndex=\(vmIndex)\n"
    }

    /// Parses `text`; nil when a field is missing or malformed (such a record is never acted on).
    init?(text: String) {
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            fields[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        guard let host = fields["host"], let pid = fields["pid"].flatMap({ Int32($0) }),
            let startTime = fields["startTime"].flatMap({ UInt64($0) }), let bootID = fields["bootID"],
            let spawnerHost = fields["spawnerHost"], let spawnerPID = fields["spawnerPID"].flatMap({ Int32($0) }),
            let spawnerStart = fields["spawnerStartTime"].flatMap({ UInt64($0) }),
            let spawnerBoot = fields["spawnerBootID"], let vmIndex = fields["vmIndex"].flatMap({ Int($0) })
        else { return nil }
        self.maker = ProcessIdentity(host: host, pid: pid, startTime: startTime, bootID: bootID)
        self.spawner = SpawnerIdentity(host: spawnerHost, pid: spawnerPID, startTime: spawnerStart, bootID: spawnerBoot)
        self.vmIndex = vmIndex
    }

    init(maker: ProcessIdentity, spawner: SpawnerIdentity, vmIndex: Int) {
        self.maker = maker
        self.spawner = spawner
        self.vmIndex = vmIndex
    }

    /// True when the record names this spawner run and VM, and a maker on `maker`'s host since its last boot.
    func matches(_ request: StorageRequest, maker current: ProcessIdentity) -> Bool {
        spawner == request.spawner && vmIndex == request.vmIndex && maker.host == current.host
            && maker.bootID == current.bootID
    }

    /// Why the maker is provably gone, or nil when it may still run (or it is not this host's to judge).
    ///
    /// Gone means: the record is from this host and either the host has rebooted since (another boot ID),
    /// or no process has the PID, or the process with that PID started at another time (the PID was reused).
    func makerGone(thisHost: String, bootID: String, startTimeOf: (Int32) -> UInt64? = Self.startTime) -> String? {
        guard maker.host == thisHost, maker.pid > 0 else { return nil }
        if !bootID.isEmpty, !maker.bootID.isEmpty, maker.bootID != bootID {
            return "its maker ran before the host rebooted (boot ID \(maker.bootID), now \(bootID))"
        }
        if SystemCall.value("kill", { kill(maker.pid, 0) }).failed(with: ESRCH) {
            return "its maker, process \(maker.pid), has ended"
        }
        if let started = startTimeOf(maker.pid), started != maker.startTime {
            return "process \(maker.pid) is no longer its maker (started at \(started), not \(maker.startTime))"
        }
        return nil
    }

    /// The start time of a process on this host, from `/proc/<pid>/stat`; nil when unknown.
    static func startTime(of pid: Int32) -> UInt64? {
        SpawnerIdentity.processStartTime(statText: SpawnerIdentity.readSmallFile("/proc/\(pid)/stat"))
    }

    /// Reads the record in the open sidecar folder; nil when absent, unreadable or malformed.
    static func read(in sidecarFd: Int32) -> OwnerRecord? {
        guard
            case .success(let fd) = SystemCall.value(
                "openat",
                {
                    openat(sidecarFd, Sidecar.ownerName, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
                }
            )
        else { return nil }
        defer { SystemCall.close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.count
        guard case .success(let n) = SystemCall.value("read", { Glibc.read(fd, &buffer, count) }), n > 0 else {
            return nil
        }
        return OwnerRecord(text: String(decoding: buffer[0..<n], as: UTF8.self))
    }

    /// Writes the record into the open sidecar folder, atomically (a temporary file renamed over it).
    func write(in sidecarFd: Int32, path sidecarPath: String) throws {
        let temporary = Sidecar.ownerName + ".new"
        let path = PathUtil.join(sidecarPath, Sidecar.ownerName)
        let fd = try SystemCall.value("openat") {
            openat(sidecarFd, temporary, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }.get("written", path: path, subject: "owner record")
        defer { SystemCall.close(fd) }
        let bytes = Array(text.utf8)
        let written = try SystemCall.value("write") {
            bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        }
        .get("written", path: path, subject: "owner record")
        guard written == bytes.count else {
            throw SystemCallError(call: "write", errno: EIO).storageError(
                "written",
                path: path,
                subject: "owner record"
            )
        }
        try SystemCall.value("renameat") { renameat(sidecarFd, temporary, sidecarFd, Sidecar.ownerName) }
            .get("moved into place", path: path, subject: "owner record")
    }
}
