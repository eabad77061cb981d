import Foundation
import ParallelVMCodec
import ParallelVMStorage

/// Worker to spawner, once at start: where the worker runs.
struct Hello {
    var host: HostID
    var cpus: Int
    var pid: Int32
    /// The worker's doorbell token (0: it has none).
    var doorbell: UInt64
    /// Where its doorbell rings from other hosts: UDP port (0: it cannot) and the host's IPv4 addresses.
    var bell: NetworkBell = .none

    func send(over transport: any FrameLink) throws(VMError) {
        try transport.send(frame().bytes, to: 0)
    }

    /// This process's hello: its host, CPU count, PID and doorbell.
    static func fromThisProcess(host: HostID, doorbell: Doorbell?) -> Hello {
        Hello(
            host: host,
            cpus: ProcessInfo.processInfo.activeProcessorCount,
            pid: getpid(),
            doorbell: doorbell?.token ?? 0,
            bell: NetworkBell.of(doorbell)
        )
    }

    func frame() -> WireWriter {
        var frame = WireWriter(kind: .hello, sourceTask: 0, destinationTask: 0)
        frame.append(host.name)
        frame.append(Int32(cpus))
        frame.append(pid)
        frame.append(doorbell)
        bell.write(to: &frame)
        return frame
    }

    init(host: HostID, cpus: Int, pid: Int32, doorbell: UInt64, bell: NetworkBell = .none) {
        self.host = host
        self.cpus = cpus
        self.pid = pid
        self.doorbell = doorbell
        self.bell = bell
    }

    init(_ envelope: Envelope) throws(VMError) {
        var reader = envelope.reader
        host = HostID(try reader.readString())
        cpus = Int(try reader.read(Int32.self))
        pid = try reader.read(Int32.self)
        doorbell = try reader.read(UInt64.self)
        bell = try NetworkBell(reading: &reader)
    }
}

/// Where a process's doorbell rings from another host: its UDP port and its host's IPv4 addresses
/// (network byte order), of which the ringer takes the one on its own network.
struct NetworkBell: Sendable {
    var port: UInt16
    var addresses: [UInt32]

    static let none = NetworkBell(port: 0, addresses: [])

    /// This process's, for `doorbell`.
    static func of(_ doorbell: Doorbell?) -> NetworkBell {
        guard let doorbell, doorbell.networkPort != 0 else { return .none }
        return NetworkBell(port: doorbell.networkPort, addresses: Doorbell.hostAddresses().map(\.address))
    }

    /// The address and port to ring from this host, if any.
    var target: (address: UInt32, port: UInt16)? {
        guard port != 0, let address = Doorbell.reachableAddress(among: addresses) else { return nil }
        return (address, port)
    }

    func write(to frame: inout WireWriter) {
        frame.append(port)
        frame.append(UInt8(min(addresses.count, 255)))
        for address in addresses.prefix(255) { frame.append(address) }
    }

    init(port: UInt16, addresses: [UInt32]) {
        self.port = port
        self.addresses = addresses
    }

    init(reading reader: inout WireReader) throws(VMError) {
        port = try reader.read(UInt16.self)
        let count = Int(try reader.read(UInt8.self))
        addresses = []
        for _ in 0..<count { addresses.append(try reader.read(UInt32.self)) }
    }
}

/// Spawner to worker, once at start: the spawner's host, so that a worker on it can wait on its doorbell.
struct Welcome {
    var host: HostID
    var pid: Int32
    var doorbell: UInt64

    func send(over transport: any FrameLink, to rank: Int) throws(VMError) {
        try transport.send(frame().bytes, to: rank)
    }

    func frame() -> WireWriter {
        var frame = WireWriter(kind: .welcome, sourceTask: 0, destinationTask: 0)
        frame.append(host.name)
        frame.append(pid)
        frame.append(doorbell)
        bell.write(to: &frame)
        return frame
    }

    /// Where the spawner's doorbell rings from other hosts (port 0: it does not; workers there poll).
    var bell: NetworkBell = .none

    init(host: HostID, pid: Int32, doorbell: UInt64, bell: NetworkBell = .none) {
        self.host = host
        self.pid = pid
        self.doorbell = doorbell
        self.bell = bell
    }

    init(_ envelope: Envelope) throws(VMError) {
        var reader = envelope.reader
        host = HostID(try reader.readString())
        pid = try reader.read(Int32.self)
        doorbell = try reader.read(UInt64.self)
        bell = try NetworkBell(reading: &reader)
    }
}

/// Spawner to worker: messages with no body.
enum Signal {
    /// Leave the worker loop; `withoutMPI`: then exit without `MPI_Finalize` (a rank of the run was lost).
    static func finalize(over transport: any FrameLink, to rank: Int, withoutMPI: Bool = false) throws(VMError) {
        let frame = WireWriter(kind: .finalize, sourceTask: 0, destinationTask: withoutMPI ? 1 : 0)
        try transport.send(frame.bytes, to: rank)
    }

    /// Whether a finalize request says to exit without `MPI_Finalize`.
    static func finalizesWithoutMPI(_ envelope: Envelope) -> Bool { envelope.destinationTask == 1 }

    /// Remove this user's local storage and answer with a ``ClearStorageReport``.
    static func clearStorage(over transport: any FrameLink, to rank: Int) throws(VMError) {
        try transport.send(WireWriter(kind: .clearStorage, sourceTask: 0, destinationTask: 0).bytes, to: rank)
    }
}

/// Worker to spawner: what clearing local storage removed, and what it could not.
enum ClearStorageReport {
    static func send(_ report: ClearReport, over transport: any FrameLink) throws(VMError) {
        try transport.send(try frame(report).bytes, to: 0)
    }

    static func frame(_ report: ClearReport) throws(VMError) -> WireWriter {
        var frame = WireWriter(kind: .clearStorageReport, sourceTask: 0, destinationTask: 0)
        do {
            frame.bytes.append(contentsOf: try BinaryEncoder.encode(report))
        } catch {
            throw VMError(.encoding, "cannot encode a clear report: \(error)", underlying: error)
        }
        return frame
    }

    static func report(from envelope: Envelope) throws(VMError) -> ClearReport {
        do {
            return try BinaryDecoder.decode(
                ClearReport.self,
                from: envelope.payload ?? Array(envelope.frame[Wire.headerSize...])
            )
        } catch {
            throw VMError(
                .encoding,
                "unreadable clear report from rank \(envelope.sourceRank): \(error)",
                underlying: error
            )
        }
    }
}

/// Spawner to worker: end task `task` if it still runs in the slot; its result says it was killed.
enum KillRequest {
    static func send(task: Int, over transport: any FrameLink, to rank: Int) throws(VMError) {
        try transport.send(WireWriter(kind: .kill, sourceTask: 0, destinationTask: task).bytes, to: rank)
    }
}

/// Task process to worker rank: where the running task's storage folder is, and whether it outlives the task.
struct TaskFolderNote {
    var task: Int
    var path: String
    var persistent: Bool

    func frame() -> WireWriter {
        var frame = WireWriter(kind: .taskFolder, sourceTask: task, destinationTask: 0)
        frame.append(path)
        frame.append(persistent)
        return frame
    }

    init(task: Int, path: String, persistent: Bool) {
        self.task = task
        self.path = path
        self.persistent = persistent
    }

    init(_ envelope: Envelope) throws(VMError) {
        var reader = envelope.reader
        task = envelope.sourceTask
        path = try reader.readString()
        persistent = try reader.readBool()
    }
}

/// Spawner to worker, and back: the run was interrupted by `signal`; the worker answers once its task
/// process is ended and its task folder removed.
enum InterruptNotice {
    static func send(signal: Int32, over transport: any FrameLink, to rank: Int) throws(VMError) {
        try transport.send(WireWriter(kind: .interrupt, sourceTask: 0, destinationTask: Int(signal)).bytes, to: rank)
    }

    static func acknowledge(over transport: any FrameLink) throws(VMError) {
        try transport.send(WireWriter(kind: .interruptAck, sourceTask: 0, destinationTask: 0).bytes, to: 0)
    }

    static func signal(of envelope: Envelope) -> Int32 { Int32(truncatingIfNeeded: envelope.destinationTask) }
}
