/// Runs a farm's jobs in this process, on the farm's thread: a blocking body there, one at a time, and an
/// async body as a task of its own, as many at once as the farm has slots (the cores).
///
/// Jobs log through a ``TaskContext`` whose lines go to the spawner's log, tagged with the host and `0:0`.
struct LocalExecution {
    typealias Unit = FarmEngine.Unit

    let engine: FarmEngine

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
        var lastKnown: String?
        let (known, rejected) = engine.rejectUnknown(unit, lastKnown: &lastKnown)
        guard let element = known.first else {
            engine.complete(rejected, unitFinished: true)
            return
        }
        let job = element.item
        guard job.runsAsync else {
            let outcome: FarmResult.Outcome
            do {
                outcome = .value(try job.runBlocking(in: context))
            } catch {
                outcome = .failure(.failed, error)
            }
            engine.complete(
                [FarmResult(index: element.index, job: job, outcome: outcome, host: nil, task: nil)],
                unitFinished: true
            )
            return
        }
        engine.localTaskStarted()
        let engine = self.engine
        Task {
            let outcome: FarmResult.Outcome
            do {
                outcome = .value(try await job.runAsync(in: context))
            } catch {
                outcome = .failure(.failed, error)
            }
            engine.complete(
                [FarmResult(index: element.index, job: job, outcome: outcome, host: nil, task: nil)],
                unitFinished: true,
                localTaskEnded: true
            )
        }
    }
}
