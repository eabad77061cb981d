import Foundation

/// A one-line progress display on standard error (`done/total, rate, time left`), rewritten in place with
/// `\r`. It stays quiet when standard error is not a terminal, so logs and pipes get no control characters.
struct ProgressLine {
    private let enabled: Bool
    private let total: Int?
    private let started = monotonicSeconds()
    private var lastDrawn = 0.0
    private var done = 0
    private var drawn = false

    init(enabled: Bool, total: Int?) {
        self.enabled = enabled && isatty(STDERR_FILENO) == 1
        self.total = total
    }

    /// Records progress; redraws at most ten times a second.
    mutating func update(done: Int) {
        self.done = done
        guard enabled else { return }
        let now = monotonicSeconds()
        guard now - lastDrawn >= 0.1 || done == total else { return }
        lastDrawn = now
        draw(now)
    }

    /// Draws the final state and ends the line.
    mutating func finish() {
        guard enabled, done > 0 || drawn else { return }
        draw(monotonicSeconds())
        FileHandle.standardError.write(Data("\n".utf8))
        drawn = false
    }

    private mutating func draw(_ now: Double) {
        let elapsed = max(now - started, 1e-9)
        let rate = Double(done) / elapsed
        var text = "\r"
        if let total, total > 0 {
            let percent = Int(100 * Double(min(done, total)) / Double(total))
            text += "\(done)/\(total) jobs (\(percent)%), \(ProgressLine.format(rate: rate))"
            if rate > 0, done < total {
                text += ", \(ProgressLine.format(seconds: Double(total - done) / rate)) left"
            } else {
                text += ", \(ProgressLine.format(seconds: elapsed)) elapsed"
            }
        } else {
            text += "\(done) jobs, \(ProgressLine.format(rate: rate)), \(ProgressLine.format(seconds: elapsed)) elapsed"
        }
        // Clear what a longer previous line left behind.
        text += "\u{1B}[K"
        FileHandle.standardError.write(Data(text.utf8))
        drawn = true
    }

    static func format(rate: Double) -> String {
        rate >= 100 ? "\(Int(rate.rounded())) jobs/s" : String(format: "%.1f jobs/s", rate)
    }

    static func format(seconds: Double) -> String {
        let whole = Int(seconds.rounded(.up))
        if whole >= 3600 { return String(format: "%d:%02d:%02d", whole / 3600, whole / 60 % 60, whole % 60) }
        return String(format: "%d:%02d", whole / 60, whole % 60)
    }
}
