internal import Glibc
internal import Synchronization

/// A child process a supervisor starts, watches and kills: in ParallelVM, the task process that runs user
/// code so that a task that traps ends that process and not the worker rank.
///
/// The child gets its own process group (so one signal reaches everything it started in it), default
/// signal dispositions and an empty signal mask (whatever MPI or the runtime set up in the parent does not
/// leak in), standard input from `/dev/null`, standard error through a pipe whose tail is kept for the
/// report of how it ended, and one end of a socket pair at descriptor `channelDescriptor` for
/// `MessageChannel`. No other descriptor of the parent reaches it.
///
/// All methods may be called from any thread. Waiting blocks the calling thread, so callers in Swift
/// concurrency run them on a thread of their own.
package final class ChildProcess: Sendable {
    /// Where the child's standard output goes.
    package enum Output: Sendable, Hashable {
        /// The parent's standard output, so a task's `print` shows where the worker's does.
        case inherit
        /// `/dev/null`.
        case discard
        /// A pipe whose read end is `standardOutput`.
        case pipe
        /// A pipe drained by a thread of this process, which copies it to this process's standard output
        /// and hands it to the output observer (`observeOutput(_:)`).
        case forward
    }

    /// Which of a child's outputs a chunk came from.
    package enum Stream: Sendable, Hashable {
        case standardOutput, standardError
    }

    /// The descriptor number the child finds its end of the socket pair at.
    package static let channelDescriptor: Int32 = 3
    /// Holds the parent's process ID, for `childDidStart` to check that the parent is still there.
    package static let parentProcessVariable = "PARALLELVM_PROCESS_PARENT"
    /// Holds the address-space limit in bytes that `childDidStart` applies (`RLIMIT_AS`).
    package static let memoryLimitVariable = "PARALLELVM_PROCESS_MEMORY_LIMIT"
    /// The variable naming the descriptor of the memory shared for the channel's rings (at
    /// `channelDescriptor + 1`), when the channel has them.
    package static let sharedMemoryVariable = "PARALLELVM_PROCESS_CHANNEL_MEMORY"
    /// The executable of the running process, for starting a task process from the same program.
    package static let currentExecutable = "/proc/self/exe"
    /// How long a finished child's standard error may stay open (held by something that left its process
    /// group) before its tail is taken as complete.
    static let standardErrorLinger: Duration = .milliseconds(500)

    /// The child's process ID, which is also its process group ID.
    package let pid: Int32
    /// The parent's end of the socket pair.
    package let channel: MessageChannel
    /// The read end of the child's standard output with `Output.pipe`, owned by this object.
    package let standardOutput: Int32?
    private let drain: OutputDrain
    /// The drain of standard output with `Output.forward`.
    private let outputDrain: OutputDrain?
    private let state = Mutex(State())

    private struct State {
        var end: ProcessEnd?
        /// Signals this supervisor sent to the group, to tell them from the kernel's.
        var sentSignals: Set<Signal> = []
    }

    /// The process IDs of every child spawned here and not yet reaped. Its lock is held across `posix_spawn`
    /// and across the orphan sweep's scan and kill, so the sweep can never take a child just started for an
    /// orphan.
    static let liveChildren = Mutex(Set<pid_t>())

    private init(
        pid: pid_t,
        channel: MessageChannel,
        standardOutput: Int32?,
        drain: OutputDrain,
        outputDrain: OutputDrain?
    ) {
        self.pid = pid
        self.channel = channel
        self.standardOutput = standardOutput
        self.drain = drain
        self.outputDrain = outputDrain
    }

    deinit {
        // Nothing a supervisor let go of may run on unsupervised, nor stay a zombie.
        if state.withLock({ $0.end == nil }) {
            _ = kill(-pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
            _ = ChildProcess.liveChildren.withLock { $0.remove(pid) }
        }
        drain.stop()
        outputDrain?.stop()
        if let standardOutput { closeDescriptor(standardOutput) }
    }

    /// Sets (or with nil removes) the function that gets what the child writes to its standard error, and
    /// to its standard output with `Output.forward`, from now on, chunk by chunk as it arrives, on a drain
    /// thread. Chunks of one stream arrive in order; the two streams are not ordered with each other.
    package func observeOutput(_ observer: (@Sendable (Stream, ArraySlice<UInt8>) -> Void)?) {
        guard let observer else {
            drain.setObserver(nil)
            outputDrain?.setObserver(nil)
            return
        }
        drain.setObserver { bytes in observer(.standardError, bytes) }
        outputDrain?.setObserver { bytes in observer(.standardOutput, bytes) }
    }

    /// Hands the observer everything the child has written so far: when this returns, every write the
    /// child finished before the call has been observed. (Text a child keeps in its own buffers, such as
    /// C's `stdout` buffer, is not written yet; the child flushes it first.)
    package func deliverPendingOutput() {
        drain.deliverPending()
        outputDrain?.deliverPending()
    }

    /// Starts a child process.
    ///
    /// - Parameters:
    ///   - executable: the path to execute (not searched in `PATH`); `currentExecutable` for the running
    ///     program.
    ///   - arguments: the whole argument vector, `arguments[0]` included; empty means `[executable]`.
    ///   - environment: the child's environment. The channel's descriptor number is added under
    ///     `channelVariable`, this process's ID under `parentProcessVariable` and the memory limit under
    ///     `memoryLimitVariable`.
    ///   - workingDirectory: the child's working directory; `nil` keeps the parent's.
    ///   - channelVariable: the environment variable that tells the child it is a task process and where its
    ///     channel is.
    ///   - standardOutput: where the child's standard output goes.
    ///   - forwardStandardError: whether the child's standard error is copied to this process's as it arrives.
    ///   - memoryLimit: an address-space limit in bytes, applied by the child in `childDidStart`, so that a
    ///     runaway allocation fails inside the child instead of calling the host's out-of-memory killer.
    ///   - standardErrorTail: the bounds of the standard error tail kept.
    ///   - sharedMemory: whether small frames of the channel pass through rings in shared memory (no
    ///     system call per frame) instead of the socket.
    /// Spawn from a thread that lives as long as the supervisor: Linux sends the parent-death signal that
    /// `childDidStart` asks for when the spawning *thread* ends, not only when the process does.
    ///
    /// - Throws: `ProcessError` with `spawnFailed` if the executable could not be started.
    package static func spawn(
        executable: String,
        arguments: [String] = [],
        environment: [String: String],
        workingDirectory: String? = nil,
        channelVariable: String,
        standardOutput: Output = .inherit,
        forwardStandardError: Bool = true,
        memoryLimit: Int? = nil,
        standardErrorTail: StandardErrorTail = StandardErrorTail(),
        sharedMemory: Bool = true,
        inheriting inherited: (descriptor: Int32, variable: String)? = nil
    ) throws(ProcessError) -> ChildProcess {
        var environment = environment
        environment[channelVariable] = String(channelDescriptor)
        environment[parentProcessVariable] = String(getpid())
        environment[memoryLimitVariable] = memoryLimit.map { String($0) }

        // Descriptors to close in the parent whatever happens; the ones the child object keeps leave the list.
        var descriptors = DescriptorList()
        defer { descriptors.closeAll() }

        let (parentEnd, childEnd) = try MessageChannel.socketPair()
        descriptors.add(parentEnd)
        descriptors.add(childEnd)
        // Without shared memory (memfd_create or mmap refused), frames take the socket, as they can.
        var memory = sharedMemory ? try? SharedRings.createMemory() : nil
        memory.map { descriptors.add($0) }
        let rings = memory.flatMap { fd in try? SharedRings(mapping: fd, supervisorEnd: true) }
        if rings == nil { memory = nil }
        let (errorRead, errorWrite) = try pipe(for: "standard error")
        descriptors.add(errorRead)
        descriptors.add(errorWrite)
        let input = try openNull(O_RDONLY)
        descriptors.add(input)
        var output: Int32?
        var outputRead: Int32?
        switch standardOutput {
        case .inherit: break
        case .discard: output = try openNull(O_WRONLY)
        case .pipe, .forward: (outputRead, output) = try pipe(for: "standard output")
        }
        output.map { descriptors.add($0) }
        outputRead.map { descriptors.add($0) }

        // The child's descriptors go to numbers above the ones it gets, so no dup2 overwrites a source that a
        // later dup2 still needs (a parent whose 0, 1 or 2 is closed hands out low numbers).
        let childInput = try descriptors.moveHigh(input)
        let childOutput = try output.map { fd throws(ProcessError) in try descriptors.moveHigh(fd) }
        let childError = try descriptors.moveHigh(errorWrite)
        let childChannel = try descriptors.moveHigh(childEnd)
        let childMemory = try memory.map { fd throws(ProcessError) in try descriptors.moveHigh(fd) }
        environment[sharedMemoryVariable] = childMemory == nil ? nil : String(channelDescriptor + 1)
        // A copy of `inherited`, which the parent keeps, for the child's next descriptor; its number goes
        // under the variable named with it.
        let inheritedNumber = channelDescriptor + (childMemory == nil ? 1 : 2)
        if let inherited { environment[inherited.variable] = String(inheritedNumber) }
        let childInherited = try inherited.map { (inherited) throws(ProcessError) -> Int32 in
            let copy = fcntl(inherited.descriptor, F_DUPFD_CLOEXEC, 64)
            guard copy >= 0 else { throw .systemCall("fcntl(F_DUPFD_CLOEXEC)", errno: errno) }
            descriptors.add(copy)
            return copy
        }

        let pid = try withSpawnActions { actions throws(ProcessError) in
            try checkedErrorNumber("posix_spawn_file_actions_adddup2") {
                posix_spawn_file_actions_adddup2(actions, childInput, STDIN_FILENO)
            }
            if let childOutput {
                try checkedErrorNumber("posix_spawn_file_actions_adddup2") {
                    posix_spawn_file_actions_adddup2(actions, childOutput, STDOUT_FILENO)
                }
            }
            try checkedErrorNumber("posix_spawn_file_actions_adddup2") {
                posix_spawn_file_actions_adddup2(actions, childError, STDERR_FILENO)
            }
            // dup2 clears close-on-exec on the copy, and glibc clears it when source and target are equal.
            try checkedErrorNumber("posix_spawn_file_actions_adddup2") {
                posix_spawn_file_actions_adddup2(actions, childChannel, channelDescriptor)
            }
            if let childMemory {
                try checkedErrorNumber("posix_spawn_file_actions_adddup2") {
                    posix_spawn_file_actions_adddup2(actions, childMemory, channelDescriptor + 1)
                }
            }
            if let childInherited {
                try checkedErrorNumber("posix_spawn_file_actions_adddup2") {
                    posix_spawn_file_actions_adddup2(actions, childInherited, inheritedNumber)
                }
            }
            if let addClosefrom = LinuxFunctions.addClosefrom {
                // MPI and its transports open descriptors without close-on-exec; none may reach a task.
                try checkedErrorNumber("posix_spawn_file_actions_addclosefrom_np") {
                    addClosefrom(actions, inheritedNumber + (childInherited == nil ? 0 : 1))
                }
            } else {
                markAllCloseOnExec()
            }
            if let workingDirectory {
                guard let addChdir = LinuxFunctions.addChdir else {
                    throw ProcessError(
                        .spawnFailed,
                        "this C library cannot set a spawned process's working directory",
                        call: "posix_spawn_file_actions_addchdir_np"
                    )
                }
                try checkedErrorNumber("posix_spawn_file_actions_addchdir_np") { addChdir(actions, workingDirectory) }
            }
            return try spawn(
                executable: executable,
                arguments: arguments.isEmpty ? [executable] : arguments,
                environment: environment,
                actions: actions
            )
        }

        var drains: [OutputDrain] = []
        do {
            let drain = try OutputDrain(
                readEnd: errorRead,
                forwardTo: forwardStandardError ? STDERR_FILENO : nil,
                tail: standardErrorTail
            )
            descriptors.remove(errorRead)
            try drain.start()
            drains.append(drain)
            if standardOutput == .forward, let outputRead {
                let outputDrain = try OutputDrain(
                    readEnd: outputRead,
                    forwardTo: STDOUT_FILENO,
                    tail: StandardErrorTail()
                )
                descriptors.remove(outputRead)
                try outputDrain.start()
                drains.append(outputDrain)
            }
        } catch {
            for drain in drains { drain.stop() }
            // A child nobody drains could block on a full pipe for ever.
            _ = kill(-pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
            _ = liveChildren.withLock { $0.remove(pid) }
            throw error
        }
        descriptors.remove(parentEnd)
        outputRead.map { descriptors.remove($0) }
        return ChildProcess(
            pid: pid,
            channel: MessageChannel(adopting: parentEnd, rings: rings),
            standardOutput: standardOutput == .pipe ? outputRead : nil,
            drain: drains[0],
            outputDrain: drains.count > 1 ? drains[1] : nil
        )
    }

    private static func spawn(
        executable: String,
        arguments: [String],
        environment: [String: String],
        actions: UnsafeMutablePointer<posix_spawn_file_actions_t>
    ) throws(ProcessError) -> pid_t {
        var attributes = posix_spawnattr_t()
        try checkedErrorNumber("posix_spawnattr_init") { posix_spawnattr_init(&attributes) }
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own group, so that signalling the group reaches what the child starts and nothing of ours.
        try checkedErrorNumber("posix_spawnattr_setpgroup") { posix_spawnattr_setpgroup(&attributes, 0) }
        // An ignored SIGPIPE, SIGINT or SIGTERM survives exec; a task process must die of them as a program does.
        var everySignal = sigset_t()
        sigfillset(&everySignal)
        try checkedErrorNumber("posix_spawnattr_setsigdefault") {
            posix_spawnattr_setsigdefault(&attributes, &everySignal)
        }
        var noSignal = sigset_t()
        sigemptyset(&noSignal)
        try checkedErrorNumber("posix_spawnattr_setsigmask") { posix_spawnattr_setsigmask(&attributes, &noSignal) }
        let flags = POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
        try checkedErrorNumber("posix_spawnattr_setflags") { posix_spawnattr_setflags(&attributes, Int16(flags)) }

        let argv = CStringArray(arguments)
        let envp = CStringArray(environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" })
        defer {
            argv.free()
            envp.free()
        }
        var pid: pid_t = 0
        let result = liveChildren.withLock { children in
            let result = posix_spawn(&pid, executable, actions, &attributes, argv.pointers, envp.pointers)
            if result == 0 { children.insert(pid) }
            return result
        }
        guard result == 0 else {
            throw ProcessError(.spawnFailed, "could not start \(executable)", call: "posix_spawn", errno: result)
        }
        return pid
    }

    private static func withSpawnActions<Result>(
        _ body: (UnsafeMutablePointer<posix_spawn_file_actions_t>) throws(ProcessError) -> Result
    ) throws(ProcessError) -> Result {
        let actions = UnsafeMutablePointer<posix_spawn_file_actions_t>.allocate(capacity: 1)
        defer { actions.deallocate() }
        try checkedErrorNumber("posix_spawn_file_actions_init") { posix_spawn_file_actions_init(actions) }
        defer { posix_spawn_file_actions_destroy(actions) }
        return try body(actions)
    }

    private static func pipe(for purpose: String) throws(ProcessError) -> (read: Int32, write: Int32) {
        try closeOnExecPipe("could not create the pipe for a child's \(purpose)")
    }

    private static func openNull(_ mode: Int32) throws(ProcessError) -> Int32 {
        try checked("open", "could not open /dev/null") { open("/dev/null", mode | O_CLOEXEC) }
    }

    /// Without `addclosefrom_np`, marks every open descriptor close-on-exec instead. Racy against threads that
    /// open descriptors meanwhile, which is why it is only the fallback.
    private static func markAllCloseOnExec() {
        for fd in openDescriptors() where fd > STDERR_FILENO {
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
    }

    /// The descriptors open in this process, from `/proc/self/fd`.
    package static func openDescriptors() -> [Int32] {
        guard let directory = opendir("/proc/self/fd") else { return [] }
        defer { closedir(directory) }
        let own = dirfd(directory)
        var result: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
            }
            if let fd = Int32(name), fd != own { result.append(fd) }
        }
        return result
    }
}

// MARK: - Waiting and killing

extension ChildProcess {
    /// Whether the child has not been reaped yet.
    package var isRunning: Bool { state.withLock { $0.end == nil } }

    /// The last lines the child wrote to standard error so far.
    package var standardErrorTail: [String] { drain.tail.lines }

    /// Blocks until the child ends, and reaps it.
    ///
    /// Before reaping, whatever is left of the child's process group is killed: a task process's helpers
    /// do not outlive it. Later calls return the same value.
    package func wait() throws(ProcessError) -> ProcessEnd {
        while true {
            if let end = try waitNonBlocking() { return end }
            var info = siginfo_t()
            // WNOWAIT: wait without reaping, so the reaping (and the group kill before it) happens once, under
            // the lock, whichever thread gets there first. EINTR and ECHILD (another thread reaped it) loop.
            if waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) == -1 && errno != EINTR && errno != ECHILD {
                throw .systemCall("waitid", errno: errno, "could not wait for process \(pid)")
            }
        }
    }

    /// Reaps the child if it ended; `nil` while it runs.
    package func waitNonBlocking() throws(ProcessError) -> ProcessEnd? {
        try state.withLock { (state: inout State) throws(ProcessError) -> ProcessEnd? in
            if let end = state.end { return end }
            var info = siginfo_t()
            let result = waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT | WNOHANG)
            if result == -1 {
                if errno == EINTR { return nil }
                if errno == ECHILD {
                    throw ProcessError(
                        .lostChild,
                        "process \(pid) was reaped by someone else (is SIGCHLD ignored?)",
                        call: "waitid",
                        errno: ECHILD
                    )
                }
                throw .systemCall("waitid", errno: errno, "could not check on process \(pid)")
            }
            guard info._sifields._sigchld.si_pid == pid else { return nil }
            let end = reap(sentSignals: state.sentSignals)
            state.end = end
            return end
        }
    }

    /// Waits at most `timeout` for the child to end; `nil` if it still runs.
    package func wait(timeout: Duration) throws(ProcessError) -> ProcessEnd? {
        let deadline = ContinuousClock.now + timeout
        var interval: Duration = .milliseconds(1)
        while true {
            if let end = try waitNonBlocking() { return end }
            let now = ContinuousClock.now
            if now >= deadline { return nil }
            sleepThread(min(interval, deadline - now))
            interval = min(interval * 2, .milliseconds(20))
        }
    }

    /// Sends `SIGTERM` to the child's process group, then `SIGKILL` if it has not ended after `grace`, and
    /// reaps it.
    package func terminate(grace: Duration) throws(ProcessError) -> ProcessEnd {
        signalGroup(.terminate)
        if let end = try wait(timeout: grace) { return end }
        signalGroup(.kill)
        return try wait()
    }

    /// Sends `SIGKILL` to the child's process group at once. `wait` then reports the end.
    package func killGroup() {
        signalGroup(.kill)
    }

    /// Sends a signal to the child's process group, unless the child was reaped already (its ID may then
    /// belong to another process). Returns whether it was sent.
    @discardableResult
    package func signalGroup(_ signal: Signal) -> Bool {
        state.withLock { state in
            guard state.end == nil else { return false }
            state.sentSignals.insert(signal)
            return kill(-pid, signal.rawValue) == 0
        }
    }

    /// Kills the rest of the group, reaps the child and collects its standard error. The caller holds the lock
    /// and has seen the child end (it is a zombie, so its ID and group ID are not reused yet).
    private func reap(sentSignals: Set<Signal>) -> ProcessEnd {
        _ = kill(-pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        _ = ChildProcess.liveChildren.withLock { $0.remove(pid) }
        _ = drain.waitForEndOfFile(timeout: ChildProcess.standardErrorLinger)
        drain.stop()
        if let outputDrain {
            _ = outputDrain.waitForEndOfFile(timeout: ChildProcess.standardErrorLinger)
            outputDrain.stop()
        }
        let tail = drain.tail
        // The wait status encoding of <sys/wait.h>: the low seven bits are the signal, zero for an exit.
        let signalNumber = status & 0x7f
        let cause: ProcessEnd.Cause =
            signalNumber == 0 ? .exited(status: (status >> 8) & 0xff) : .signaled(Signal(rawValue: signalNumber))
        let signal = signalNumber == 0 ? nil : Signal(rawValue: signalNumber)
        return ProcessEnd(
            cause: cause,
            signalWasSentBySupervisor: signal.map { sentSignals.contains($0) } ?? false,
            outOfMemoryLine: tail.outOfMemoryLine,
            fatalErrorLine: tail.fatalErrorLine,
            standardErrorTail: tail.lines
        )
    }
}

/// Descriptors the parent holds while it spawns, closed when it is done unless taken out.
private struct DescriptorList {
    private var descriptors: [Int32] = []

    mutating func add(_ fd: Int32) { descriptors.append(fd) }

    mutating func remove(_ fd: Int32) { descriptors.removeAll { $0 == fd } }

    /// Replaces `fd` with a close-on-exec copy numbered above the descriptors a child receives.
    mutating func moveHigh(_ fd: Int32) throws(ProcessError) -> Int32 {
        if fd > ChildProcess.channelDescriptor { return fd }
        let copy = try checked("fcntl(F_DUPFD_CLOEXEC)") {
            fcntl(fd, F_DUPFD_CLOEXEC, ChildProcess.channelDescriptor + 1)
        }
        remove(fd)
        closeDescriptor(fd)
        add(copy)
        return copy
    }

    func closeAll() { descriptors.forEach(closeDescriptor) }
}

/// A NULL-terminated array of C strings for `posix_spawn`, freed explicitly.
private struct CStringArray {
    let pointers: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>

    init(_ strings: [String]) {
        pointers = .allocate(capacity: strings.count + 1)
        for (index, string) in strings.enumerated() { pointers[index] = strdup(string) }
        pointers[strings.count] = nil
    }

    func free() {
        var index = 0
        while let pointer = pointers[index] {
            Glibc.free(pointer)
            index += 1
        }
        pointers.deallocate()
    }
}
