extension VM {
    /// Runs `function` once in every worker slot, or once on every host, and returns each task's result:
    /// for work every process or every host must do once, such as loading data into the task processes
    /// (see also `setup` in ``VM/init(functions:debug:mirrorMap:startupDir:translateStartupDir:persistentStorage:missingMirrorSources:isolation:setup:logger:)``).
    ///
    /// Every slot it runs on must be free: a busy slot would make "once on every slot" a lie, so it throws a
    /// ``VMError`` (`.invalidSpawn`) naming the busy slots instead. Results come in slot order. Without
    /// workers it returns no result.
    ///
    /// - Parameters:
    ///   - function: the registered function to run.
    ///   - args: its arguments, the same for every task.
    ///   - perHost: one task on each host (its first free slot) instead of one in every slot.
    ///   - timeout: seconds each task may run.
    public func runEverywhere<Arguments, Result>(
        _ function: RemoteFunction<Arguments, Result>,
        args: Arguments,
        perHost: Bool = false,
        timeout: Double? = nil
    ) throws -> [(task: TaskID, result: TaskResult)] {
        guard spawner.hasWorkers else { return [] }
        let busy = spawner.withBook { book in book.liveWorkers.filter { book.task(in: $0) != nil } }
        guard busy.isEmpty else {
            throw VMError(
                .invalidSpawn,
                "runEverywhere('\(function.name)'): slot(s) \(busy.map(String.init).joined(separator: ", ")) are busy; run it with every worker free"
            )
        }
        var tasks: [TaskID] = []
        if perHost {
            for host in hosts() {
                tasks += try spawn(
                    named: function.name,
                    args: args,
                    count: 1,
                    targets: [host],
                    sendBack: true,
                    timeout: timeout
                )
            }
        } else {
            tasks = try spawn(
                named: function.name,
                args: args,
                count: nil,
                targets: nil,
                sendBack: true,
                timeout: timeout
            )
        }
        var waiting = Set(tasks)
        var results: [TaskID: TaskResult] = [:]
        while !waiting.isEmpty {
            guard
                let event = try spawner.nextEvent(
                    until: .never,
                    where: { kind, task in kind != .user && waiting.contains(task) }
                )
            else { break }
            switch event {
            case .result(let task, let result): results[task] = result
            case .exit(let task): waiting.remove(task)
            case .user: break
            }
        }
        return tasks.sorted { $0.slot < $1.slot }.compactMap { task in results[task].map { (task, $0) } }
    }
}
