import Foundation
import ParallelVMCodec
import ParallelVMExperiment

extension Job {
    /// This job, with files of its task folder to collect into its experiment when it finishes.
    ///
    /// ```swift
    /// let jobs = points.map { Job(simulate, args: $0).collecting("result.csv", "plots/*.png") }
    /// try await vm.dispatch(jobs, experiment: experiment)
    /// ```
    ///
    /// After the function returns, still in the task, what the patterns match in the task's folder (its
    /// current folder when it returns: its local storage folder with a mirror map) is copied into
    /// `outputs/<job index>/` of the dispatch's experiment, keeping folders below the task folder. The
    /// copy is staged, synced and renamed into place, so `outputs/<job index>/` appears whole or not at
    /// all, and it is in place before the job counts as done (before its result is journaled). A task
    /// killed mid-copy leaves no `outputs/<job index>/`; a job run again replaces the older one at once.
    /// A pattern that matches nothing collects nothing; a failed copy fails the job.
    ///
    /// Only a dispatch with an `experiment` collects outputs: elsewhere the job fails with a ``VMError``
    /// saying so. A pattern that is empty, absolute or climbs out with `..` makes the dispatch throw an
    /// `ExperimentError` (code `.invalidPattern`) naming it, before any job runs.
    ///
    /// - Parameter patterns: paths relative to the task folder; `*`, `?` and `[...]` match within one
    ///   path component. Calling `collecting` again adds patterns.
    public func collecting(_ patterns: [String]) -> Job<Value> {
        let base =
            outputRequest
            ?? OutputRequest(
                patterns: [],
                function: function,
                encodedArguments: encodedArguments,
                local: local
            )
        var request = base
        request.patterns += patterns
        return Job(wrapping: self, request: request, index: nil, experiment: nil, location: nil)
    }

    /// This job, with files of its task folder to collect into its experiment; see `collecting(_:)`.
    public func collecting(_ patterns: String...) -> Job<Value> { collecting(patterns) }

    /// The patterns of the files collected into the experiment when the job finishes (see
    /// `collecting(_:)`); empty for a job that collects nothing.
    public var outputs: [String] { outputRequest?.patterns ?? [] }

    /// What a job that collects outputs was before it was wrapped, and what it collects.
    struct OutputRequest: Sendable {
        var patterns: [String]
        var function: String
        var encodedArguments: @Sendable () throws -> [UInt8]
        var local: LocalBody<Value>
    }

    /// The job as job `index` of a dispatch with `experiment`: its outputs go to `outputs/<index>/`.
    /// A job that collects nothing stays as it is.
    func bound(toIndex index: Int, of experiment: Experiment, at location: ExperimentLocation) -> Job<Value> {
        guard let outputRequest else { return self }
        return Job(wrapping: self, request: outputRequest, index: index, experiment: experiment, location: location)
    }

    /// The job that runs `request.function` through `OutputJob`; without an index and an experiment it
    /// fails, saying that only an experiment's dispatch collects outputs.
    private init(
        wrapping job: Job<Value>,
        request: OutputRequest,
        index: Int?,
        experiment: Experiment?,
        location: ExperimentLocation?
    ) {
        let name = job.name
        let wrapped: @Sendable ([UInt8]) -> OutputJob.Arguments = { inner in
            OutputJob.Arguments(
                function: request.function,
                arguments: inner,
                job: name,
                index: index,
                patterns: request.patterns,
                experiment: location
            )
        }
        let spawn: @Sendable (VM, Double?, Set<Int>) throws -> TaskID? = { vm, timeout, avoiding in
            let inner: [UInt8]
            do {
                inner = try request.encodedArguments()
            } catch {
                throw VMError(.encoding, "cannot encode the arguments of \(name): \(error)", underlying: error)
            }
            return try vm.spawn(
                named: OutputJob.name,
                args: wrapped(inner),
                count: 1,
                targets: nil,
                sendBack: true,
                timeout: timeout,
                avoiding: avoiding
            ).first
        }
        let collect: @Sendable () throws -> Void = {
            guard let index, let experiment else { throw OutputJob.withoutExperiment(name, request.patterns) }
            _ = try experiment.collectOutputs(
                jobIndex: index,
                from: FileManager.default.currentDirectoryPath,
                patterns: request.patterns
            )
        }
        let local: LocalBody<Value>
        switch request.local {
        case .blocking(let body):
            local = .blocking { task in
                let value = try body(task)
                try collect()
                return value
            }
        case .async(let body):
            local = .async { task in
                let value = try await body(task)
                try collect()
                return value
            }
        }
        self.init(
            storage: JobStorage(
                function: request.function,
                explicitName: name,
                arguments: (),
                extra: job.extra,
                timeout: job.timeout,
                spawn: spawn,
                encode: { try BinaryEncoder.encode(wrapped(try request.encodedArguments())) },
                local: local,
                outputRequest: request
            )
        )
    }

    /// The error of the first pattern that cannot name outputs, or nil.
    func outputPatternError(in experiment: Experiment) -> ExperimentError? {
        for pattern in outputs {
            if let problem = Experiment.problem(withOutputPattern: pattern) {
                return ExperimentError(
                    .invalidPattern,
                    experiment: experiment.name,
                    path: pattern,
                    reason: "\(problem); job \(name) names it",
                    subject: "output pattern"
                )
            }
        }
        return nil
    }
}

/// The internal function that runs a job and then collects its outputs into its experiment, in the task,
/// before the result goes back. Every rank registers it (`Startup`) over the functions it serves.
enum OutputJob {
    /// The registered name; user functions cannot take it without a type clash.
    static let name = "ParallelVM.outputs"

    /// The job's function and encoded arguments, and where its outputs go.
    struct Arguments: Codable, Sendable {
        var function: String
        var arguments: [UInt8]
        /// The job's name, for errors.
        var job: String
        /// The job's index in its dispatch; nil outside an experiment.
        var index: Int?
        var patterns: [String]
        var experiment: ExperimentLocation?
    }

    /// The function over `table`, the functions this rank knows.
    static func function(over table: FunctionTable) -> AnyRemoteFunction {
        AnyRemoteFunction(
            name: name,
            argumentType: _typeName(Arguments.self, qualified: true),
            resultType: "(the result type of the function it runs)"
        ) { bytes, task in
            let job: Arguments
            do {
                job = try BinaryDecoder.decode(Arguments.self, from: bytes)
            } catch {
                throw TaskFailure(
                    typeName: "ParallelVM.VMError",
                    message: "function '\(name)' could not decode its arguments: \(error)"
                )
            }
            guard let function = table[job.function] else {
                throw VMError(
                    .unknownFunction,
                    "function '\(job.function)' is not registered on rank \(task.taskID.slot) (host \(task.host))"
                )
            }
            guard let index = job.index, let experiment = job.experiment else {
                throw withoutExperiment(job.job, job.patterns)
            }
            let result = try function.call(job.arguments, task)
            _ = try Experiment.collectOutputs(
                experiment: experiment.name,
                folder: try experiment.localFolder(),
                jobIndex: index,
                from: FileManager.default.currentDirectoryPath,
                patterns: job.patterns
            )
            return result
        }
    }

    static func withoutExperiment(_ job: String, _ patterns: [String]) -> VMError {
        VMError(
            .invalidArgument,
            "job \(job) collects outputs (\(patterns.joined(separator: ", "))), which only a dispatch with an "
                + "experiment does: pass experiment: to dispatch"
        )
    }
}
