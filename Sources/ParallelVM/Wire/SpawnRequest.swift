import ParallelVMCodec
import ParallelVMStorage

/// Spawner to worker: run a registered function as task `task` of the worker's slot.
///
/// Body: send-back flag, known-tasks mark, timeout, function name, length-prefixed settings, then the
/// encoded arguments (appended, or as a payload message of their own when large).
struct SpawnRequest {
    /// The task number the spawner gave the task.
    var task: Int
    /// Whether the task reports a ``TaskResult`` before it ends.
    var sendBack: Bool
    /// Every task number below this one had been handed out when the request was sent (see ``UserFrame``).
    var knownTasks: Int
    /// Seconds the task may run before its worker kills it; 0 for no limit.
    var timeout: Double
    var function: String
    /// The spawning VM object's ``SpawnSettings``, encoded once per VM object.
    var settings: [UInt8]
    var arguments: [UInt8]

    func send(over transport: any FrameLink, to slot: Int) throws(VMError) {
        var frame = header()
        try transport.sendFrame(&frame, payload: arguments, to: slot)
    }

    /// The frame without the arguments, which travel as its payload.
    func header() -> WireWriter {
        var frame = WireWriter(
            kind: .spawn,
            sourceTask: 0,
            destinationTask: task,
            capacity: 64 + function.utf8.count + settings.count + arguments.count
        )
        frame.append(sendBack)
        frame.append(Int64(knownTasks))
        frame.append(timeout.bitPattern)
        frame.append(function)
        frame.append(lengthPrefixed: settings)
        return frame
    }

    init(
        task: Int,
        sendBack: Bool,
        knownTasks: Int,
        timeout: Double = 0,
        function: String,
        settings: [UInt8],
        arguments: [UInt8]
    ) {
        self.task = task
        self.sendBack = sendBack
        self.knownTasks = knownTasks
        self.timeout = timeout
        self.function = function
        self.settings = settings
        self.arguments = arguments
    }

    init(_ envelope: Envelope) throws(VMError) {
        var reader = envelope.reader
        task = envelope.destinationTask
        sendBack = try reader.readBool()
        knownTasks = Int(try reader.read(Int64.self))
        timeout = Double(bitPattern: try reader.read(UInt64.self))
        function = try reader.readString()
        settings = try reader.readLengthPrefixed()
        arguments = envelope.payload(after: &reader)
    }
}

/// The settings of the VM object that spawned a task; they travel with every spawn request.
struct SpawnSettings: Codable, Sendable {
    var debug: Int
    var vmIndex: Int
    /// Local storage, mirroring and working folder; nil leaves the task where MPI started the worker.
    var storage: StorageRequest?
    /// The experiment of the dispatch that spawned the task: its task process keeps `tasks/<task>.log`
    /// there. Nil outside an experiment.
    var experiment: ExperimentLocation?

    func encoded() throws(VMError) -> [UInt8] {
        do {
            return try BinaryEncoder.encode(self)
        } catch {
            throw VMError(.encoding, "cannot encode the VM's spawn settings: \(error)", underlying: error)
        }
    }

    init(debug: Int, vmIndex: Int, storage: StorageRequest?, experiment: ExperimentLocation? = nil) {
        self.debug = debug
        self.vmIndex = vmIndex
        self.storage = storage
        self.experiment = experiment
    }

    init(decoding bytes: [UInt8]) throws(VMError) {
        do {
            self = try BinaryDecoder.decode(SpawnSettings.self, from: bytes)
        } catch {
            throw VMError(.encoding, "malformed spawn settings: \(error)", underlying: error)
        }
    }
}
