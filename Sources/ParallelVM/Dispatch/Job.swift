import ParallelVMCodec

/// One unit of work for `VM.dispatch(_:remote:chunkSize:failFast:progress:collectResults:collector:)`
/// and ``Farm``: a registered function, its arguments, and optional extra data that stays on the spawner.
///
/// ```swift
/// let double = RemoteFunction("double") { (x: Int, _: TaskContext) in 2 * x }
/// let jobs = (0..<100).map { Job(double, args: $0, extra: "input \($0)") }
/// ```
///
/// The arguments are encoded only when the job is sent to a worker; a job that runs in this process
/// (`VM.dispatch(_:remote:chunkSize:failFast:progress:collectResults:collector:)` with `remote: false`,
/// or a VM without workers) calls the function directly.
public struct Job<Value: Codable & Sendable>: Sendable, CustomStringConvertible {
    /// What the job is, in one object: a job is copied as one reference, and the farm's thread works on
    /// the same object without knowing `Value` (see ``FarmJob``).
    let storage: JobStorage<Value>

    /// The registered name of the function the job runs.
    public var function: String { storage.function }
    /// How results and errors name the job: by default the function and its arguments, e.g. `double(21)`.
    public var name: String { storage.name }
    /// Data kept with the job on the spawner and handed back with its ``JobResult``; never sent to a worker.
    public var extra: (any Sendable)? { storage.extra }
    /// Seconds the job may run on a worker; nil: the dispatch's timeout.
    public var timeout: Double? { storage.timeout }
    /// Spawns the job in one free slot with a time limit; returns the task, or nil when no slot was free.
    var spawn: @Sendable (VM, Double?, Set<Int>) throws -> TaskID? { storage.spawn }
    /// Encodes the arguments, for a chunk of jobs sent as one task.
    var encodedArguments: @Sendable () throws -> [UInt8] { storage.encode }
    /// Runs the job in this process.
    var local: LocalBody<Value> { storage.local }
    /// The outputs to collect and the job as it was before `collecting(_:)` wrapped it.
    var outputRequest: OutputRequest? { storage.outputRequest }

    init(storage: JobStorage<Value>) {
        self.storage = storage
    }

    /// A job that runs `function` with `args`.
    ///
    /// - Parameters:
    ///   - function: the registered function to run.
    ///   - args: its arguments, encoded only when the job goes to a worker.
    ///   - name: how results and errors name the job (default: `function(args)`, shortened).
    ///   - extra: data kept with the job on the spawner, e.g. to tell jobs apart in a collector.
    ///   - timeout: seconds the job may run on a worker before it is killed and fails as `.timedOut`;
    ///     nil takes the dispatch's `timeout`.
    public init<Arguments>(
        _ function: RemoteFunction<Arguments, Value>,
        args: Arguments,
        name: String? = nil,
        extra: (any Sendable)? = nil,
        timeout: Double? = nil
    ) {
        let body = function.body
        self.init(
            function: function.name,
            args: args,
            name: name,
            extra: extra,
            timeout: timeout,
            local: .blocking { task in try body(args, task) }
        )
    }

    /// A job that runs an ``AsyncRemoteFunction``; run in this process, such jobs run concurrently.
    ///
    /// - Parameters:
    ///   - function: the registered function to run.
    ///   - args: its arguments, encoded only when the job goes to a worker.
    ///   - name: how results and errors name the job (default: `function(args)`, shortened).
    ///   - extra: data kept with the job on the spawner, e.g. to tell jobs apart in a collector.
    ///   - timeout: seconds the job may run on a worker before it is killed and fails as `.timedOut`;
    ///     nil takes the dispatch's `timeout`.
    public init<Arguments>(
        _ function: AsyncRemoteFunction<Arguments, Value>,
        args: Arguments,
        name: String? = nil,
        extra: (any Sendable)? = nil,
        timeout: Double? = nil
    ) {
        let body = function.body
        self.init(
            function: function.name,
            args: args,
            name: name,
            extra: extra,
            timeout: timeout,
            local: .async { task in try await body(args, task) }
        )
    }

    /// A job that runs a ``Spawnable`` value: the instance, with its state, runs on a worker.
    public init<S: Spawnable>(_ instance: S, name: String? = nil, extra: (any Sendable)? = nil, timeout: Double? = nil)
    where S.Result == Value {
        self.init(
            function: S.functionName,
            args: instance,
            name: name ?? "\(S.functionName)(…)",
            extra: extra,
            timeout: timeout,
            local: .blocking { task in try instance.run(in: task) }
        )
    }

    private init<Arguments: Codable & Sendable>(
        function: String,
        args: Arguments,
        name: String?,
        extra: (any Sendable)?,
        timeout: Double?,
        local: LocalBody<Value>
    ) {
        storage = JobStorage(
            function: function,
            explicitName: name,
            arguments: args,
            extra: extra,
            timeout: timeout,
            spawn: { vm, timeout, avoiding in
                try vm.spawn(
                    named: function,
                    args: args,
                    count: 1,
                    targets: nil,
                    sendBack: true,
                    timeout: timeout,
                    avoiding: avoiding
                ).first
            },
            encode: { try BinaryEncoder.encode(args) },
            local: local,
            outputRequest: nil
        )
    }

    public var description: String { name }
}

/// How a job runs in this process: a blocking body runs on the dispatcher's own thread, an async body as a task.
enum LocalBody<Value: Sendable>: Sendable {
    case blocking(@Sendable (TaskContext) throws -> Value)
    case async(@Sendable (TaskContext) async throws -> Value)
}

/// The outcome of one job, as a collector sees it and as the dispatcher returns it.
public struct JobResult<Value: Codable & Sendable>: Sendable {
    /// The position of the job in the job sequence (or in spawn order, for a ``Farm``), from 0.
    public let index: Int
    /// The job itself, with its ``Job/extra`` data.
    public let job: Job<Value>
    /// The value the function returned, or why the job failed.
    public let outcome: Result<Value, JobError>
    /// The host that ran the job; nil when it ran in this process.
    public let host: HostID?
    /// The task that ran the job (shared by the jobs of one chunk); nil when it ran in this process.
    public let task: TaskID?
    /// How many times the job was started: 1, or more when `retries` ran it again after its task crashed,
    /// timed out or lost its worker.
    public internal(set) var attempts: Int = 1
    /// True when the result was not run but read back from the dispatch's experiment journal (a job of an
    /// earlier run with the same index, function and arguments).
    public internal(set) var reused: Bool = false

    /// Always inlined: a farm makes one per job in code generic over `Value`, where a call of its own
    /// would look the result's type metadata up again for every job.
    @inline(__always)
    init(
        index: Int,
        job: Job<Value>,
        outcome: Result<Value, JobError>,
        host: HostID?,
        task: TaskID?,
        attempts: Int = 1,
        reused: Bool = false
    ) {
        self.index = index
        self.job = job
        self.outcome = outcome
        self.host = host
        self.task = task
        self.attempts = attempts
        self.reused = reused
    }

    /// The job's ``Job/extra`` data.
    public var extra: (any Sendable)? { job.extra }

    /// Whether the function returned a value.
    public var succeeded: Bool {
        if case .success = outcome { return true }
        return false
    }

    /// The value, or nil when the job failed.
    public var value: Value? { try? outcome.get() }

    /// Why the job failed, or nil when it succeeded.
    public var error: JobError? {
        if case .failure(let error) = outcome { return error }
        return nil
    }

    /// The value; throws the ``JobError`` when the job failed.
    public func get() throws(JobError) -> Value { try outcome.get() }
}

/// The error of a failed job read back from an experiment journal (``JobError/underlying`` of a reused
/// failure): the original error's type and text, and where it ran.
public struct JournaledFailure: Error, Sendable, CustomStringConvertible {
    /// The fully qualified type name of the error the job threw.
    public let typeName: String
    /// The error's text.
    public let message: String
    /// The host the job ran on.
    public let host: String
    /// The task it ran in.
    public let task: String

    public var description: String { "\(typeName): \(message) (journaled, from task \(task) on host \(host))" }
}

/// Why a job failed: names the job and carries the error.
public struct JobError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is.
    public enum Code: String, Sendable {
        /// The function threw an error, or the worker could not decode its arguments or encode its result
        /// (``JobError/typeName`` and ``JobError/message`` tell which).
        case failed
        /// The function is not registered (on any rank: every rank registers the same functions).
        case unknownFunction
        /// The arguments could not be encoded, or the result could not be decoded as the job's type.
        case encoding
        /// The VM could not run the job: MPI failed, or the task ended without a result.
        case vm
        /// The job's task process died: a trap, a signal, an exit, or out of memory (``JobError/termination``
        /// says which).
        case crashed
        /// The job ran longer than its timeout and was killed.
        case timedOut
        /// The job was killed: ``VM/kill(_:)``, a cancelled dispatch, or `finalize(timeout:)`.
        case killed
        /// The worker rank running the job was lost.
        case workerLost
    }

    /// What kind of failure this is.
    public let code: Code
    /// The index of the job.
    public let index: Int
    /// The job's ``Job/name``.
    public let job: String
    /// The registered name of the job's function.
    public let function: String
    /// The fully qualified type name of the error that was thrown (for a remote job, as reported by the worker).
    public let typeName: String
    /// The error's text.
    public let message: String
    /// The error itself: a ``RemoteError`` when the job ran on a worker, a ``VMError`` when the VM could
    /// not run it, or the error the function threw when it ran in this process.
    public let underlying: any Error

    init<V>(_ code: Code, index: Int, job: Job<V>, underlying: any Error) {
        self.code = JobError.refine(code, for: underlying)
        self.index = index
        self.job = job.name
        self.function = job.function
        self.underlying = underlying
        if let remote = underlying as? RemoteError {
            self.typeName = remote.typeName
            self.message = remote.message
        } else {
            self.typeName = _typeName(type(of: underlying), qualified: true)
            self.message = String(describing: underlying)
        }
    }

    /// A failure with every field given (a failure read back from an experiment journal).
    init(
        code: Code,
        index: Int,
        job: String,
        function: String,
        typeName: String,
        message: String,
        underlying: any Error
    ) {
        self.code = code
        self.index = index
        self.job = job
        self.function = function
        self.typeName = typeName
        self.message = message
        self.underlying = underlying
    }

    /// How the job's task ended, when it ended without returning (crashed, timed out, killed, worker lost).
    public var termination: TaskTermination? { (underlying as? RemoteError)?.underlying as? TaskTermination }

    /// A failure whose task did not return gets the code that says how it ended.
    static func refine(_ code: Code, for underlying: any Error) -> Code {
        guard code == .failed, let termination = (underlying as? RemoteError)?.underlying as? TaskTermination else {
            return code
        }
        switch termination.reason {
        case .signal, .exited, .outOfMemory: return .crashed
        case .timedOut: return .timedOut
        case .killed: return .killed
        case .workerLost: return .workerLost
        }
    }

    public var description: String {
        let place = (underlying as? RemoteError).map { " in task \($0.task) on \($0.host)" } ?? ""
        return "job #\(index) \(job) failed\(place): \(typeName): \(message)"
    }
}
