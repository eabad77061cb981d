import Foundation
import Glibc
import Synchronization

/// The one line at the bottom of the terminal where a dispatch draws its progress, shared by the process so
/// that log lines and collector output are printed above it: clear the line, print, redraw.
///
/// Where it draws is decided once per process:
/// - `PARALLELVM_PROGRESS=0`: nowhere.
/// - Standard error, when it is a terminal (a program run on its own from a shell).
/// - Under an MPI launcher started from a terminal (standard error is then a pipe): standard output, when
///   the launcher's standard output is that terminal, so that the line travels with the program's output
///   in order; otherwise (output redirected) the controlling terminal, `/dev/tty`.
/// - `PARALLELVM_PROGRESS=1` draws even without a terminal: on `/dev/tty` when it opens, else on standard
///   error.
///
/// Without a terminal and without `PARALLELVM_PROGRESS=1` nothing is drawn, so logs and pipes get no
/// control characters.
final class StatusLine: Sendable {
    static let shared = StatusLine(environment: ProcessInfo.processInfo.environment)

    /// Where the line goes.
    enum Target: Equatable {
        case standardError
        /// Standard output, forwarded by the launcher to the terminal it runs in.
        case standardOutput
        /// The controlling terminal, which output through the launcher's pipes reaches later than this
        /// process writes it: a draw first waits (briefly) until the launcher has taken that output.
        case terminal(Int32)
    }

    /// The longest a draw waits for the launcher to take this process's pending output.
    static let drainSeconds = 0.2

    let target: Target?

    private struct State {
        /// The text shown or to show again, nil when no line is drawn.
        var text: String?
        /// Whether the line was cleared for output and is still to be drawn again.
        var cleared = false
    }
    private let state = Mutex(State())

    init(environment: [String: String]) {
        target = StatusLine.chooseTarget(
            environment: environment,
            standardErrorIsTerminal: isatty(STDERR_FILENO) == 1,
            openTerminal: {
                let fd = open("/dev/tty", O_WRONLY | O_NOCTTY | O_CLOEXEC)
                return fd >= 0 ? fd : nil
            },
            launcherWritesToTerminal: { isatty(STDOUT_FILENO) == 1 && StatusLine.parentOutputIsControllingTerminal() }
        )
    }

    /// The decision described above, with the terminal checks passed in so that it can be tested.
    static func chooseTarget(
        environment: [String: String],
        standardErrorIsTerminal: Bool,
        openTerminal: () -> Int32?,
        launcherWritesToTerminal: () -> Bool
    ) -> Target? {
        let forced = environment["PARALLELVM_PROGRESS"]
        if forced == "0" { return nil }
        if standardErrorIsTerminal { return .standardError }
        if Startup.launchedByMPI(environment) {
            if launcherWritesToTerminal() { return .standardOutput }
            if let fd = openTerminal() { return .terminal(fd) }
        }
        if forced == "1" { return openTerminal().map { .terminal($0) } ?? .standardError }
        return nil
    }

    /// Whether the parent process (the launcher) writes its standard output to this process's controlling
    /// terminal: the terminal device of `/proc/self/stat` against the device of the parent's descriptor 1.
    static func parentOutputIsControllingTerminal() -> Bool {
        guard let line = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
            let fields = line.split(separator: ")").last?.split(separator: " "), fields.count > 4,
            let terminal = UInt64(fields[4]), terminal != 0
        else { return false }
        var info = stat()
        guard stat("/proc/\(getppid())/fd/1", &info) == 0, info.st_mode & S_IFMT == S_IFCHR else { return false }
        let device = UInt64(info.st_rdev)
        // tty_nr packs major and minor as the kernel's old_encode_dev does; st_rdev as glibc's makedev.
        let terminalMajor = (terminal >> 8) & 0xfff
        let terminalMinor = (terminal & 0xff) | ((terminal >> 12) & 0xfff00)
        let deviceMajor = ((device >> 8) & 0xfff) | ((device >> 32) & ~0xfff)
        let deviceMinor = (device & 0xff) | ((device >> 12) & ~0xff)
        return terminalMajor == deviceMajor && terminalMinor == deviceMinor
    }

    var isEnabled: Bool { target != nil }

    /// Shows `text` as the line.
    func draw(_ text: String) {
        guard let target else { return }
        state.withLock { state in
            state.text = text
            show(text, on: target)
            state.cleared = false
        }
    }

    /// Ends the line: draws `text` a last time and moves to a new line.
    func finish(_ text: String) {
        guard let target else { return }
        state.withLock { state in
            show(text, on: target)
            write("\n", to: target)
            state.text = nil
            state.cleared = false
        }
    }

    /// Runs `body`, which prints, with the line cleared, and draws the line again after it.
    func printAbove(_ body: () -> Void) {
        clearForOutput()
        body()
        redraw()
    }

    /// Clears the line before output that this process prints, until ``redraw()``.
    func clearForOutput() {
        guard let target else { return }
        state.withLock { state in
            guard state.text != nil, !state.cleared else { return }
            write("\r\u{1B}[K", to: target)
            state.cleared = true
        }
    }

    /// Draws the line again after ``clearForOutput()``.
    func redraw() {
        guard let target else { return }
        state.withLock { state in
            guard let text = state.text, state.cleared else { return }
            show(text, on: target)
            state.cleared = false
        }
    }

    private func show(_ text: String, on target: Target) {
        fflush(nil)
        if target != .standardError { StatusLine.waitUntilLauncherTookOutput() }
        write("\r" + text + "\u{1B}[K", to: target)
    }

    /// Waits, at most ``drainSeconds``, until the launcher has read what this process wrote to its
    /// standard output and error (pipes or pseudo-terminals that it forwards to the terminal), so that a
    /// line printed just before lands above the progress line instead of running into it.
    static func waitUntilLauncherTookOutput() {
        let deadline = monotonicSeconds() + drainSeconds
        for fd in [STDOUT_FILENO, STDERR_FILENO] {
            while pendingBytes(fd) > 0 && monotonicSeconds() < deadline { usleep(500) }
        }
    }

    /// Bytes written to `fd` that its reader has not taken yet: 0 for anything but a pipe or a terminal.
    static func pendingBytes(_ fd: Int32) -> Int32 {
        var pending: Int32 = 0
        if isatty(fd) == 1 {
            return ioctl(fd, UInt(TIOCOUTQ), &pending) == 0 ? pending : 0
        }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFIFO else { return 0 }
        return ioctl(fd, UInt(FIONREAD), &pending) == 0 ? pending : 0
    }

    private func write(_ text: String, to target: Target) {
        let fd: Int32
        switch target {
        case .standardError: fd = STDERR_FILENO
        case .standardOutput: fd = STDOUT_FILENO
        case .terminal(let terminal): fd = terminal
        }
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return }
            offset += written
        }
    }
}
