import Foundation
import Glibc
import Synchronization

/// The one line at the bottom of the terminal where a dispatch draws its progress, shared by the process so
/// that log lines and collector output are printed above it: clear the line, print, redraw.
///
/// Where it draws is decided once per process:
/// - `PARALLELVM_PROGRESS=0`: nowhere.
/// - standard error, when it is a terminal (a program run on its own from a shell);
/// - otherwise the controlling terminal (`/dev/tty`), when the process runs under an MPI launcher, which
///   makes standard error a pipe even when `mpirun` was started from a terminal;
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
        /// The controlling terminal, which output of the launcher's pipes reaches later than this process
        /// writes it: a redraw waits ``StatusLine/settleSeconds`` after a print.
        case terminal(Int32)
    }

    /// How long a redraw on the controlling terminal waits after output was printed above the line, so that
    /// the launcher has forwarded that output first.
    static let settleSeconds = 0.25

    let target: Target?

    private struct State {
        /// The text shown, nil when no line is drawn.
        var text: String?
        /// The line is drawn again only after this time (monotonic seconds).
        var settledAt = 0.0
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
            }
        )
    }

    /// The decision described above, with the terminal checks passed in so that it can be tested.
    static func chooseTarget(
        environment: [String: String],
        standardErrorIsTerminal: Bool,
        openTerminal: () -> Int32?
    ) -> Target? {
        let forced = environment["PARALLELVM_PROGRESS"]
        if forced == "0" { return nil }
        if standardErrorIsTerminal { return .standardError }
        if forced == "1" || Startup.launchedByMPI(environment) {
            if let fd = openTerminal() { return .terminal(fd) }
        }
        return forced == "1" ? .standardError : nil
    }

    var isEnabled: Bool { target != nil }

    /// Shows `text` as the line, unless output printed above it is still settling; `force` draws anyway
    /// (after waiting for it to settle).
    func draw(_ text: String, force: Bool = false) {
        guard let target else { return }
        state.withLock { state in
            state.text = text
            let now = monotonicSeconds()
            if now < state.settledAt {
                guard force else { return }
                Thread.sleep(forTimeInterval: state.settledAt - now)
            }
            fflush(nil)
            write("\r" + text + "\u{1B}[K", to: target)
            state.cleared = false
        }
    }

    /// Ends the line: draws `text` a last time and moves to a new line.
    func finish(_ text: String) {
        guard let target else { return }
        draw(text, force: true)
        state.withLock { state in
            write("\n", to: target)
            state.text = nil
        }
    }

    /// Runs `body`, which prints, with the line cleared; the line comes back with the next draw.
    func printAbove(_ body: () -> Void) {
        guard let target else { return body() }
        let shown = state.withLock { state -> Bool in
            guard state.text != nil else { return false }
            if !state.cleared { write("\r\u{1B}[K", to: target) }
            state.cleared = true
            return true
        }
        body()
        guard shown else { return }
        fflush(nil)
        state.withLock { state in
            if case .terminal = target { state.settledAt = monotonicSeconds() + StatusLine.settleSeconds }
        }
    }

    /// Clears the line before output that this process prints itself (a collector's), until the next draw.
    func clearForOutput() {
        printAbove {}
    }

    private func write(_ text: String, to target: Target) {
        let fd: Int32
        switch target {
        case .standardError: fd = STDERR_FILENO
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
