internal import Glibc

/// A POSIX signal number with its name, so that reports read "SIGSEGV (11)" rather than a bare number
/// that differs between architectures.
package struct Signal: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    package var rawValue: Int32

    package init(rawValue: Int32) { self.rawValue = rawValue }

    package static let hangup = Signal(rawValue: SIGHUP)
    package static let interrupt = Signal(rawValue: SIGINT)
    package static let quit = Signal(rawValue: SIGQUIT)
    package static let illegalInstruction = Signal(rawValue: SIGILL)
    package static let trap = Signal(rawValue: SIGTRAP)
    package static let abort = Signal(rawValue: SIGABRT)
    package static let busError = Signal(rawValue: SIGBUS)
    package static let floatingPointException = Signal(rawValue: SIGFPE)
    package static let kill = Signal(rawValue: SIGKILL)
    package static let segmentationFault = Signal(rawValue: SIGSEGV)
    package static let brokenPipe = Signal(rawValue: SIGPIPE)
    package static let alarm = Signal(rawValue: SIGALRM)
    package static let terminate = Signal(rawValue: SIGTERM)
    package static let cpuTimeExceeded = Signal(rawValue: SIGXCPU)
    package static let fileSizeExceeded = Signal(rawValue: SIGXFSZ)

    /// The conventional name, like `SIGSEGV`; real-time signals read `SIGRTMIN+n`, unknown ones `SIG?n`.
    package var name: String {
        if let name = Signal.names[rawValue] { return name }
        let realTimeMinimum = Int32(__libc_current_sigrtmin())
        if rawValue >= realTimeMinimum && rawValue <= Int32(__libc_current_sigrtmax()) {
            return rawValue == realTimeMinimum ? "SIGRTMIN" : "SIGRTMIN+\(rawValue - realTimeMinimum)"
        }
        return "SIG?\(rawValue)"
    }

    /// `SIGSEGV (11)`.
    package var description: String { "\(name) (\(rawValue))" }

    private static let names: [Int32: String] = [
        SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP",
        SIGABRT: "SIGABRT", SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGUSR1: "SIGUSR1",
        SIGSEGV: "SIGSEGV", SIGUSR2: "SIGUSR2", SIGPIPE: "SIGPIPE", SIGALRM: "SIGALRM", SIGTERM: "SIGTERM",
        SIGSTKFLT: "SIGSTKFLT", SIGCHLD: "SIGCHLD", SIGCONT: "SIGCONT", SIGSTOP: "SIGSTOP", SIGTSTP: "SIGTSTP",
        SIGTTIN: "SIGTTIN", SIGTTOU: "SIGTTOU", SIGURG: "SIGURG", SIGXCPU: "SIGXCPU", SIGXFSZ: "SIGXFSZ",
        SIGVTALRM: "SIGVTALRM", SIGPROF: "SIGPROF", SIGWINCH: "SIGWINCH", SIGIO: "SIGIO", SIGPWR: "SIGPWR",
        SIGSYS: "SIGSYS",
    ]
}
