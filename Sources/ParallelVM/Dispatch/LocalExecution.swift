/// Runs a farm's jobs in this process, on the farm's thread: a blocking body there, one at a time, and an
/// async body as a task of its own, as many at once as the farm has slots (the cores).
///
/// Jobs log through a ``TaskContext`` whose lines go to the spawner's log, tagged with the host and `0:0`.
struct LocalExecution<Value: Codable & Sendable> {
    typealias Unit = FarmEngine<Value>.Unit

    let engine: FarmEngine<Value>

    func serve() {
        let vm = engine.vm
        let context = TaskContext(
            host: LocalTaskHost(spawner: vm.spawner),
            taskID: .spawner,
            hostID: vm.spawner.host,
            debug: vm.debug,
            vmIndex: vm.vmIndex
        )
        while let unit = engine.takeLocalUnit() {
            run(unit, in: context)
        }
    }

    private func run(_ unit: Unit, in context: TaskContext) {
        let (known, rejected) = engine.rejectUnknown(unit)
        guard let element = known.first else {
            engine.complete(rejected, unitFinished: true)
            return
        }
        switch element.item.local {
        case .blocking(let body):
            let outcome: Result<Value, JobError>
            do {
                outcome = .success(try body(context))
            } catch {
                outcome = .failure(JobError(.failed, index: element.index, job: element.item, underlying: error))
            }
            engine.complete(
                [JobResult(index: element.index, job: element.item, outcome: outcome, host: nil, task: nil)],
                unitFinished: true
            )
        case .async(let body):
            engine.localTaskStarted()
            let engine = self.engine
            Task {
                let outcome: Result<Value, JobError>
                do {
                    outcome = .success(try await body(context))
                } catch {
                    outcome = .failure(JobError(.failed, index: element.index, job: element.item, underlying: error))
                }
                engine.complete(
                    [JobResult(index: element.index, job: element.item, outcome: outcome, host: nil, task: nil)],
                    unitFinished: true,
                    localTaskEnded: true
                )
            }
        }
    }
}
