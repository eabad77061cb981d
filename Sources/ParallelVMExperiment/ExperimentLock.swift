import Foundation
import Glibc
import ParallelVMStorage

/// The claim of one run on an experiment: an exclusive `flock` on the folder's `lock` file.
///
/// The kernel drops the lock when its descriptor is closed: on `close()`, or when the process dies,
/// however it dies, so a crashed run never keeps its experiment locked. A `flock` belongs to an open file
/// description, so a second open in the same process is refused just like one in another process; on NFS,
/// Linux emulates `flock` with byte-range locks the server sees, so other hosts are refused too. The
/// holder writes who it is into the file, and a refused opener quotes it. The file is never deleted
/// (deleting a lock file lets two runs lock two different files).
final class ExperimentLock: Sendable {
    /// Name of the lock file in the experiment folder.
    static let fileName = "lock"

    private let fd: Int32

    private init(fd: Int32) { self.fd = fd }

    deinit { SystemCall.close(fd) }

    /// Takes the lock of the experiment folder open as `folderFd`, without waiting.
    static func take(in folderFd: Int32, folder: String, experiment: String) throws(ExperimentError) -> ExperimentLock {
        let path = Paths.join(folder, fileName)
        let fd = try SystemCall.value("openat") {
            openat(folderFd, fileName, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o644)
        }.get("opened", experiment: experiment, path: path, subject: "lock file")
        let locked = SystemCall.value("flock") { flock(fd, LOCK_EX | LOCK_NB) }
        if locked.failed(with: EWOULDBLOCK) {
            let holder = contents(of: fd)
            SystemCall.close(fd)
            throw ExperimentError(
                .inUse,
                experiment: experiment,
                path: folder,
                reason: "is open in another run: \(describe(holder)); it stays locked until that run closes "
                    + "the experiment or ends",
                subject: "experiment folder"
            )
        }
        if let failure = locked.failure {
            SystemCall.close(fd)
            throw failure.experimentError("locked", experiment: experiment, path: path, subject: "lock file")
        }
        let lock = ExperimentLock(fd: fd)
        let bytes = Array(holderText().utf8)
        try SystemCall.value("ftruncate") { ftruncate(fd, 0) }
            .get("written", experiment: experiment, path: path, subject: "lock file")
        try SystemCall.value("pwrite") { bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } }
            .get("written", experiment: experiment, path: path, subject: "lock file")
        return lock
    }

    /// This process: `host=`, `pid=`, `processStarted=` (ISO 8601, when known) and `opened=` lines.
    static func holderText() -> String {
        var text = "host=\(Paths.hostName())\npid=\(getpid())\n"
        if let started = processStarted { text += "processStarted=\(Timestamp.format(started))\n" }
        return text + "opened=\(Timestamp.now())\n"
    }

    /// "process 4242 on host node7, started 2025-01-31T12:00:00.000Z, opened it at 2025-…".
    static func describe(_ holder: String) -> String {
        var fields: [String: String] = [:]
        for line in holder.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            fields[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        guard let pid = fields["pid"], let host = fields["host"] else {
            return "a process that has not yet said who it is (the lock file is empty)"
        }
        var text = "process \(pid) on host \(host)"
        if let started = fields["processStarted"] { text += ", started \(started)" }
        if let opened = fields["opened"] { text += ", opened it at \(opened)" }
        return text
    }

    private static func contents(of fd: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 1024)
        let count = buffer.count
        guard case .success(let n) = SystemCall.value("pread", { pread(fd, &buffer, count, 0) }) else { return "" }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }

    /// When this process started, read once (see ``processStartDate()``).
    static let processStarted = processStartDate()

    /// When this process started: boot time (`btime` of `/proc/stat`) plus field 22 of `/proc/self/stat`.
    static func processStartDate() -> Date? {
        guard let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")"),
            let system = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
            let bootLine = system.split(separator: "\n").first(where: { $0.hasPrefix("btime ") }),
            let boot = Double(bootLine.dropFirst(6).trimmingCharacters(in: .whitespaces))
        else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))
        guard fields.count > 19, let ticks = Double(fields[19]), ticksPerSecond > 0 else { return nil }
        return Date(timeIntervalSince1970: boot + ticks / ticksPerSecond)
    }
}
