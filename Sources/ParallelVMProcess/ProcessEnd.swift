/// How a child process ended, with what its standard error said last.
///
/// A task that fails by crashing has no error value of its own; this is what the supervisor can tell the
/// user instead, so its `description` is a phrase that follows the process's name: "task process 4711
/// was killed by signal SIGSEGV (11)".
package struct ProcessEnd: Sendable, Hashable, CustomStringConvertible {
    /// The status `waitid` reported.
    package enum Cause: Sendable, Hashable {
        /// The process called `exit` (or returned from main) with this status.
        case exited(status: Int32)
        /// A signal ended the process.
        case signaled(Signal)
    }

    /// The status `waitid` reported.
    package var cause: Cause
    /// Whether this supervisor sent the signal that ended the process (through `terminate` or `killGroup`),
    /// which rules out the kernel's out-of-memory killer as the sender of a `SIGKILL`.
    package var signalWasSentBySupervisor: Bool
    /// The standard error line saying that memory ran out, if the process wrote one.
    package var outOfMemoryLine: String?
    /// The last standard error line with a Swift runtime error (`Fatal error: ...`), if any: usually the reason
    /// for a trap.
    package var fatalErrorLine: String?
    /// The last lines the process wrote to standard error (bounded, see `StandardErrorTail`).
    package var standardErrorTail: [String]

    package init(
        cause: Cause,
        signalWasSentBySupervisor: Bool = false,
        outOfMemoryLine: String? = nil,
        fatalErrorLine: String? = nil,
        standardErrorTail: [String] = []
    ) {
        self.cause = cause
        self.signalWasSentBySupervisor = signalWasSentBySupervisor
        self.outOfMemoryLine = outOfMemoryLine
        self.fatalErrorLine = fatalErrorLine
        self.standardErrorTail = standardErrorTail
    }

    /// The standard error tail, preceded by the out-of-memory and fatal error lines when they scrolled out
    /// of it (a backtrace after a trap easily fills the tail), so that the reason is always in the report.
    package var standardErrorWithReasons: [String] {
        let reasons = [outOfMemoryLine, fatalErrorLine].compactMap { $0 }
            .filter { !standardErrorTail.contains($0) }
        return (reasons.count == 2 && reasons[0] == reasons[1] ? [reasons[0]] : reasons) + standardErrorTail
    }

    /// Whether the process said it could not allocate memory.
    package var ranOutOfMemory: Bool { outOfMemoryLine != nil }

    /// The signal that ended the process, if one did.
    package var signal: Signal? {
        if case .signaled(let signal) = cause { return signal }
        return nil
    }

    /// "exited with status 3", "was killed by signal SIGSEGV (11)", "ran out of memory and was killed by signal
    /// SIGILL (4)", "was killed by signal SIGKILL (9), possibly by the kernel's out-of-memory killer".
    package var description: String {
        let how: String
        switch cause {
        case .exited(let status): how = "exited with status \(status)"
        case .signaled(let signal): how = "was killed by signal \(signal)"
        }
        if ranOutOfMemory { return "ran out of memory and \(how)" }
        guard let signal else { return how }
        if signalWasSentBySupervisor { return "\(how), sent by its supervisor" }
        // The kernel's OOM killer sends SIGKILL and leaves no other trace the process could see.
        if signal == .kill { return "\(how), possibly by the kernel's out-of-memory killer" }
        return how
    }

    /// The description for a process that ended while it owed a result: a clean exit is then a failure too,
    /// and says so ("exited with status 0 before reporting a result").
    package var descriptionBeforeResult: String {
        if cause == .exited(status: 0) && !ranOutOfMemory { return "exited with status 0 before reporting a result" }
        return description
    }
}
