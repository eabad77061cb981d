internal import Glibc

extension ChildProcess {
    /// The exit status of a task process that finds at start that its supervisor is already gone.
    package static let parentGoneExitStatus: Int32 = 71

    /// Sets up a process started by `spawn`, and returns its channel; `nil` if this process was not started
    /// as a task process (`channelVariable` is not set), so the program goes on as usual.
    ///
    /// Call it early in the child, before starting threads: it edits the environment. It
    /// - asks the kernel for `SIGKILL` when the parent dies (`PR_SET_PDEATHSIG`; `posix_spawn` cannot), then
    ///   checks that the parent named in `parentProcessVariable` is still its parent, and exits with
    ///   `parentGoneExitStatus` if not: a parent that died before the request took effect sends nothing;
    /// - applies the memory limit in `memoryLimitVariable` as `RLIMIT_AS` (`posix_spawn` cannot set limits);
    /// - marks the channel close-on-exec, so programs the task starts do not hold it open after the task
    ///   process dies (which would hide its death from the supervisor);
    /// - maps the memory of the channel's rings named by `sharedMemoryVariable`, when there is one;
    /// - removes these variables, so that a copy of the program the task starts is not taken for a task process.
    ///
    /// - Throws: `badEnvironment` if the variable does not name a socket descriptor.
    package static func childDidStart(channelVariable: String) throws(ProcessError) -> MessageChannel? {
        guard let value = getenv(channelVariable).map({ String(cString: $0) }) else { return nil }
        guard let fd = Int32(value), fd >= 0 else {
            throw ProcessError(.badEnvironment, "\(channelVariable)=\(value) is not a descriptor number")
        }
        try prctl(PrctlOption.setParentDeathSignal, UInt(SIGKILL), name: "PR_SET_PDEATHSIG")
        if let parentText = getenv(parentProcessVariable).map({ String(cString: $0) }) {
            guard let parent = pid_t(parentText) else {
                throw ProcessError(.badEnvironment, "\(parentProcessVariable)=\(parentText) is not a process ID")
            }
            if getppid() != parent { _exit(parentGoneExitStatus) }
        }
        // Mapped before the memory limit, which a small limit could otherwise make fail.
        var rings: SharedRings?
        if let memoryText = getenv(sharedMemoryVariable).map({ String(cString: $0) }) {
            guard let memory = Int32(memoryText), memory >= 0 else {
                throw ProcessError(.badEnvironment, "\(sharedMemoryVariable)=\(memoryText) is not a descriptor number")
            }
            rings = try SharedRings(mapping: memory, supervisorEnd: false)
            // The mapping stays; the descriptor must not reach what the task starts.
            closeDescriptor(memory)
        }
        if let limitText = getenv(memoryLimitVariable).map({ String(cString: $0) }) {
            guard let limit = rlim_t(limitText) else {
                throw ProcessError(.badEnvironment, "\(memoryLimitVariable)=\(limitText) is not a number of bytes")
            }
            try setMemoryLimit(limit)
        }
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFSOCK else {
            throw ProcessError(.badEnvironment, "\(channelVariable)=\(value) is not an open socket")
        }
        try checked("fcntl(F_SETFD)", "could not make the channel close-on-exec") { fcntl(fd, F_SETFD, FD_CLOEXEC) }
        for variable in [channelVariable, parentProcessVariable, memoryLimitVariable, sharedMemoryVariable] {
            unsetenv(variable)
        }
        return MessageChannel(adopting: fd, rings: rings)
    }

    /// Lowers `RLIMIT_AS` (soft and hard, so the task cannot raise it again) to `limit` bytes.
    private static func setMemoryLimit(_ limit: rlim_t) throws(ProcessError) {
        let resource = __rlimit_resource_t(RLIMIT_AS.rawValue)
        var current = rlimit()
        try checked("getrlimit(RLIMIT_AS)") { getrlimit(resource, &current) }
        var lowered = rlimit(rlim_cur: min(limit, current.rlim_max), rlim_max: min(limit, current.rlim_max))
        try checked("setrlimit(RLIMIT_AS)", "could not set the memory limit of \(limit) bytes") {
            setrlimit(resource, &lowered)
        }
    }

    /// The environment of this process, for passing on to a child with additions.
    package static func currentEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var entry = environ
        while let pointer = entry.pointee {
            let text = String(cString: pointer)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            entry += 1
        }
        return result
    }
}
