extension VM {
    /// The default number of events a subscription of ``events`` buffers before it drops the oldest.
    public static let defaultEventBufferSize = 4096

    /// The VM's status events from now on: hosts, slots, tasks, storage and dispatch progress.
    ///
    /// ```swift
    /// Task {
    ///     for await event in vm.events {
    ///         if case .taskCrashed(let task, let function, let detail) = event.kind { print(task, function, detail) }
    ///     }
    /// }
    /// ```
    ///
    /// Each use makes a new subscription, which starts with a ``VMEvent/Kind-swift.enum/hostUp(host:slots:)``
    /// per host and a ``VMEvent/Kind-swift.enum/slotBusy(slot:host:task:)`` per task running, and then gets
    /// every event as the spawner sees it. Events come from the spawner's message loop, that is while your
    /// program (or a dispatch) receives messages. The buffer keeps the newest
    /// ``defaultEventBufferSize`` events, so a slow reader never slows the VM: it loses the oldest, counted
    /// in ``VMEvents/droppedCount``. The sequence ends when the VM is finalized; a subscription ends when
    /// its loop ends or its task is cancelled.
    public var events: VMEvents { events(bufferSize: VM.defaultEventBufferSize) }

    /// The VM's status events, buffering at most `bufferSize` of them (see ``events``).
    ///
    /// - Parameter bufferSize: how many events may wait for the reader; the oldest are dropped beyond
    ///   that. At least 1.
    /// - Precondition: `bufferSize` is at least 1.
    public func events(bufferSize: Int) -> VMEvents {
        precondition(bufferSize >= 1, "VM.events(bufferSize:) needs a buffer of at least 1 event, not \(bufferSize)")
        return EventHub.shared.subscribe(bufferSize: bufferSize) {
            spawner.withBook { book in
                var kinds: [VMEvent.Kind] = book.hosts.map { host in
                    .hostUp(host: host, slots: book.slots.indices.filter { book.slots[$0].host == host })
                }
                for slot in book.slots.indices where slot > 0 {
                    if let number = book.task(in: slot), let host = book.host(of: slot) {
                        kinds.append(.slotBusy(slot: slot, host: host, task: TaskID(slot: slot, number: number)))
                    }
                }
                return kinds
            }
        }
    }
}
