import ParallelVMCodec
import ParallelVMExperiment

/// A job as the farm's thread sees it: what starting it takes, with no trace of the job's result type.
///
/// The farm's thread works on these and on ``FarmResult`` only, so that it runs code specialised for
/// concrete types: a farm generic over the result type ran unspecialised code for a type of the user's
/// module, which spent a fifth of its time in the runtime's generic type lookups and copied every job
/// and result through value witnesses. A class, so that a job moves through the queue as one reference;
/// a ``Job`` is a ``JobStorage``, this class with what needs its result type, so a job becomes a farm's
/// job without a copy.
///
/// Invariant for @unchecked Sendable: every stored property, here and in ``JobStorage``, is a `let` of a
/// `Sendable` type (a class that is not final cannot state `Sendable` itself).
class FarmJob: @unchecked Sendable {
    /// The registered name of the job's function.
    let function: String
    /// The registered function a worker runs for the job: its own, or `OutputJob` for a job that
    /// collects outputs (which runs its own on its behalf).
    let spawnedFunction: String
    /// The name given to the job; nil: the default name, made only when asked for (a string made for
    /// every job would cost tiny jobs more than running them).
    let explicitName: String?
    /// The arguments, for the default name.
    let arguments: any Sendable
    /// Data kept with the job on the spawner; never sent to a worker.
    let extra: (any Sendable)?
    /// Seconds the job may run on a worker; nil: the dispatch's timeout.
    let timeout: Double?
    /// Spawns the job in one free slot with a time limit; returns the task, or nil when no slot was free.
    let spawn: @Sendable (VM, Double?, Set<Int>) throws -> TaskID?
    /// Encodes the arguments, for a chunk of jobs sent as one task.
    let encode: @Sendable () throws -> [UInt8]

    fileprivate init(
        function: String,
        spawnedFunction: String,
        explicitName: String?,
        arguments: any Sendable,
        extra: (any Sendable)?,
        timeout: Double?,
        spawn: @escaping @Sendable (VM, Double?, Set<Int>) throws -> TaskID?,
        encode: @escaping @Sendable () throws -> [UInt8]
    ) {
        self.function = function
        self.spawnedFunction = spawnedFunction
        self.explicitName = explicitName
        self.arguments = arguments
        self.extra = extra
        self.timeout = timeout
        self.spawn = spawn
        self.encode = encode
    }

    /// How results and errors name the job (see ``Job/name``).
    var name: String {
        if let explicitName { return explicitName }
        // Long argument texts are shortened so that error messages stay readable.
        var text = String(describing: arguments)
        if text.count > 60 { text = text.prefix(57) + "…" }
        return "\(function)(\(text))"
    }

    /// Whether the job's body is async (run in this process as a task of its own).
    var runsAsync: Bool { preconditionFailure("FarmJob is abstract: use JobStorage") }

    /// Runs a blocking body in this process; its value as the farm hands it over.
    func runBlocking(in context: TaskContext) throws -> any Sendable {
        preconditionFailure("FarmJob is abstract: use JobStorage")
    }

    /// Runs the job's body in this process, blocking or async; its value as the farm hands it over.
    func runAsync(in context: TaskContext) async throws -> any Sendable {
        preconditionFailure("FarmJob is abstract: use JobStorage")
    }
}

/// What a ``Job`` is: a ``FarmJob`` with what needs the job's result type, which only the farm's callers,
/// who know `Value`, read.
final class JobStorage<Value: Codable & Sendable>: FarmJob, @unchecked Sendable {
    /// Runs the job in this process.
    let local: LocalBody<Value>
    /// The outputs to collect and the job as it was before `collecting(_:)` wrapped it.
    let outputRequest: Job<Value>.OutputRequest?
    /// Whether the job collects outputs (`outputRequest` is not nil), read without copying the request.
    let collectsOutputs: Bool

    init(
        function: String,
        explicitName: String?,
        arguments: any Sendable,
        extra: (any Sendable)?,
        timeout: Double?,
        spawn: @escaping @Sendable (VM, Double?, Set<Int>) throws -> TaskID?,
        encode: @escaping @Sendable () throws -> [UInt8],
        local: LocalBody<Value>,
        outputRequest: Job<Value>.OutputRequest?
    ) {
        self.local = local
        self.outputRequest = outputRequest
        self.collectsOutputs = outputRequest != nil
        super.init(
            function: function,
            spawnedFunction: outputRequest == nil ? function : OutputJob.name,
            explicitName: explicitName,
            arguments: arguments,
            extra: extra,
            timeout: timeout,
            spawn: spawn,
            encode: encode
        )
    }

    override var runsAsync: Bool {
        if case .async = local { return true }
        return false
    }

    override func runBlocking(in context: TaskContext) throws -> any Sendable {
        guard case .blocking(let body) = local else { preconditionFailure("\(name) has an async body") }
        return try body(context)
    }

    override func runAsync(in context: TaskContext) async throws -> any Sendable {
        switch local {
        case .blocking(let body): return try body(context)
        case .async(let body): return try await body(context)
        }
    }
}

/// The outcome of one job as the farm's thread hands it over; the farm's caller makes the job's
/// ``JobResult`` of it (``Farm/jobResult(of:index:job:)``), decoding the value there.
struct FarmResult: Sendable {
    /// What the job gave.
    enum Outcome: Sendable {
        /// A worker's result: the type name it reports and the value as it encoded it.
        case encoded(typeName: String, bytes: [UInt8])
        /// The value of a job run in this process.
        case value(any Sendable)
        /// The job failed; the code is refined already (see ``JobError/refine(_:for:)``).
        case failure(JobError.Code, any Error)
    }

    /// The job's index in the farm (spawn order, from 0).
    let index: Int
    let job: FarmJob
    let outcome: Outcome
    /// The host that ran the job; nil when it ran in this process.
    let host: HostID?
    /// The task that ran the job; nil when it ran in this process.
    let task: TaskID?
    /// How many times the job was started.
    var attempts = 1
    /// The job's journal key, when the farm's thread made it (see ``FarmQueue/Element/key``).
    var key: JobKey?

    init(index: Int, job: FarmJob, outcome: Outcome, host: HostID?, task: TaskID?) {
        self.index = index
        self.job = job
        if case .failure(let code, let error) = outcome {
            self.outcome = .failure(JobError.refine(code, for: error), error)
        } else {
            self.outcome = outcome
        }
        self.host = host
        self.task = task
    }

    /// A worker's encoded value, or nil.
    var encodedValue: [UInt8]? {
        if case .encoded(_, let bytes) = outcome { return bytes }
        return nil
    }

    /// The failure's code, or nil for a job that gave a value.
    var failureCode: JobError.Code? {
        if case .failure(let code, _) = outcome { return code }
        return nil
    }
}
