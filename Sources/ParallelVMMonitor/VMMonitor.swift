public import Foundation
import Hummingbird
public import Logging
public import ParallelVM
import ServiceLifecycle
import Synchronization

/// A web monitor of a running `VM`, in the manner of discoro's port-8181 page: the cluster
/// (tasks submitted, running and done; per host its slots, how many are busy and how many tasks it has
/// done), each host's slots, and the task list with a button that kills a running task. The page updates
/// live, from server-sent events.
///
/// ```swift
/// let vm = try VM(functions: [work])
/// let monitor = try VMMonitor(vm, host: "127.0.0.1", port: 8181)
/// print("monitor at \(try await monitor.listening())")
/// let results = try await vm.dispatch(jobs)
/// await monitor.stop()
/// try vm.finalize()
/// ```
///
/// It also serves, for programs:
/// - `GET /api/status`: JSON with `hosts` (each with `name`, `slots`, `busy`, `done`, `up`, `slotList`),
///   `tasks` (`submitted`, `running`, `done`, `outcomes`), the `running` and recently `finished` tasks,
///   the `dispatch` progress and the `storage` totals;
/// - `GET /api/events?after=N`: the VM events after number `N` (the last 1000 are kept);
/// - `GET /api/stream`: the same events live, as server-sent events;
/// - `POST /api/tasks/SLOT:NUMBER/kill`: `VM.kill(_:)` for that task;
/// - `GET /metrics`: Prometheus text, every series named `parallelvm_…`.
///
/// It listens on loopback unless told otherwise. On any other address it needs a token, and then every
/// request must carry it, as `Authorization: Bearer TOKEN` or `?token=TOKEN` (the page passes on the one
/// it was opened with); one without gets 401 and nothing is killed.
///
/// Make it on the spawner (rank 0), after the `VM`; it reads the VM's `VM.events`, which flow while
/// the program or a dispatch receives messages.
public final class VMMonitor: Sendable {
    /// The address it listens on.
    public let host: String
    /// The token every request must carry, when one was given.
    let token: String?
    let vm: VM
    let state = MonitorState()
    let broadcaster = Broadcaster()

    private struct Run {
        var port: Int?
        var failure: MonitorError?
        var waiting: [CheckedContinuation<Int, any Error>] = []
        var server: Task<Void, Never>?
        var group: ServiceGroup?
        var reader: Task<Void, Never>?
        var heartbeat: Task<Void, Never>?
        var stopped = false
    }
    private let run = Mutex(Run())

    /// Starts serving the monitor of `vm` at `host`:`port`, in the background.
    ///
    /// - Parameters:
    ///   - vm: the VM to show; the monitor reads its events from now on.
    ///   - host: the address to listen on; anything but loopback (`127.x.x.x`, `::1`, `localhost`) needs a
    ///     `token`.
    ///   - port: the TCP port; 0 picks a free one (see ``listening()``).
    ///   - token: a secret every request must carry; required off loopback.
    ///   - logger: where the HTTP server logs; the default is `Logger(label: "ParallelVMMonitor")` at
    ///     warning level and above.
    /// - Throws: ``MonitorError`` when `host` is not loopback and there is no token, or the token or port is
    ///   invalid. An address that cannot be listened on is reported by ``listening()``.
    public init(
        _ vm: VM,
        host: String = "127.0.0.1",
        port: Int = 8181,
        token: String? = nil,
        logger: Logger? = nil
    )
        throws
    {
        guard (0...65535).contains(port) else {
            throw MonitorError(.invalidPort, "port \(port) is not a TCP port (0...65535; 0 picks a free one)")
        }
        if let token {
            guard !token.isEmpty, token.unicodeScalars.allSatisfy({ $0.value > 32 && $0.value < 127 }) else {
                throw MonitorError(
                    .invalidToken,
                    "the token must be printable ASCII without spaces, and not empty"
                )
            }
        } else if !VMMonitor.isLoopback(host) {
            throw MonitorError(
                .tokenRequired,
                "refusing to listen on '\(host)' without a token: anyone who reaches that address could kill tasks; pass token: or listen on 127.0.0.1"
            )
        }
        self.vm = vm
        self.host = host
        self.token = token
        var serverLogger = logger ?? Logger(label: "ParallelVMMonitor")
        if logger == nil { serverLogger.logLevel = .warning }
        start(port: port, logger: serverLogger)
    }

    /// Whether `host` names the loopback interface.
    static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" || host == "[::1]" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    private func start(port: Int, logger: Logger) {
        let events = vm.events
        let reader = Task { [state, broadcaster] in
            for await event in events {
                let record = state.apply(event, dropped: events.droppedCount)
                broadcaster.send(record)
            }
        }
        let heartbeat = Task { [broadcaster] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(15))
                broadcaster.sendHeartbeat()
            }
        }
        let application = Application(
            router: makeRouter(),
            configuration: .init(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { [weak self] channel in
                self?.listened(port: channel.localAddress?.port ?? port)
            },
            logger: logger
        )
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: application)], logger: logger)
        )
        let server = Task { [weak self, host] in
            do {
                try await group.run()
            } catch is CancellationError {
            } catch {
                self?.failed(
                    MonitorError(.cannotListen, "cannot serve on \(host):\(port): \(error)", underlying: error)
                )
            }
            self?.failed(MonitorError(.cannotListen, "the monitor on \(host):\(port) has stopped"))
        }
        run.withLock { run in
            run.server = server
            run.group = group
            run.reader = reader
            run.heartbeat = heartbeat
        }
    }

    private func listened(port: Int) {
        let waiting = run.withLock { run in
            run.port = port
            defer { run.waiting = [] }
            return run.waiting
        }
        for continuation in waiting { continuation.resume(returning: port) }
    }

    private func failed(_ error: MonitorError) {
        let waiting = run.withLock { run in
            if run.port == nil, run.failure == nil { run.failure = error }
            defer { run.waiting = [] }
            return run.waiting
        }
        for continuation in waiting { continuation.resume(throwing: error) }
    }

    /// Waits until the server listens and returns its port (the one picked, when `port` was 0).
    ///
    /// - Throws: ``MonitorError`` (``MonitorError/Code-swift.enum/cannotListen``) when it cannot listen.
    @discardableResult
    public func listening() async throws -> Int {
        try await withCheckedThrowingContinuation { continuation in
            let known: Result<Int, MonitorError>? = run.withLock { run in
                if let port = run.port { return .success(port) }
                if let failure = run.failure { return .failure(failure) }
                run.waiting.append(continuation)
                return nil
            }
            if let known { continuation.resume(with: known) }
        }
    }

    /// The page's address, once the server listens (with the token, when there is one).
    public func url() async throws -> URL {
        let port = try await listening()
        let name = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        let query = token.map { "?token=\($0)" } ?? ""
        guard let url = URL(string: "http://\(name):\(port)/\(query)") else {
            throw MonitorError(.cannotListen, "'\(host)' does not make a URL")
        }
        return url
    }

    /// A monitor dropped without ``stop()`` stops reading events and serving, without waiting.
    deinit {
        broadcaster.finish()
        run.withLock { run in
            for task in [run.reader, run.heartbeat, run.server] { task?.cancel() }
        }
    }

    /// Stops serving: open pages and streams are closed. Safe to call more than once.
    public func stop() async {
        let (group, tasks) = run.withLock { run -> (ServiceGroup?, [Task<Void, Never>]) in
            guard !run.stopped else { return (nil, []) }
            run.stopped = true
            return (run.group, [run.reader, run.heartbeat].compactMap { $0 } + [run.server].compactMap { $0 })
        }
        // Open streams end first, so that the graceful shutdown has no response to wait for.
        broadcaster.finish()
        for task in tasks.dropLast() { task.cancel() }
        await group?.triggerGracefulShutdown()
        for task in tasks { await task.value }
    }
}
