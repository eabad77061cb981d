import Foundation

/// A dispatch's one-line progress display (`done/total, rate, time left`), rewritten in place on the
/// process's ``StatusLine``: on standard error when it is a terminal, on the controlling terminal under
/// mpirun, nowhere on a pipe unless `PARALLELVM_PROGRESS=1`. Every update is also a
/// ``VMEvent/Kind-swift.enum/dispatchProgress(done:total:finished:)`` event.
struct ProgressLine {
    private let enabled: Bool
    private let total: Int?
    private let started = monotonicSeconds()
    private var lastDrawn = 0.0
    private var done = 0
    private var drawn = false

    init(enabled: Bool, total: Int?) {
        self.enabled = enabled && StatusLine.shared.isEnabled
        self.total = total
    }

    /// Records progress; redraws at most ten times a second.
    mutating func update(done: Int) {
        self.done = done
        EventHub.shared.emit(.dispatchProgress(done: done, total: total, finished: false))
        guard enabled else { return }
        let now = monotonicSeconds()
        guard now - lastDrawn >= 0.1 || done == total else { return }
        lastDrawn = now
        StatusLine.shared.draw(text(now))
        drawn = true
    }

    /// Clears the line before the collector prints; ``redraw()`` draws it again.
    func clearForOutput() {
        if enabled && drawn { StatusLine.shared.clearForOutput() }
    }

    /// Draws the line again after the collector.
    func redraw() {
        if enabled && drawn { StatusLine.shared.redraw() }
    }

    /// Draws the final state and ends the line.
    mutating func finish() {
        EventHub.shared.emit(.dispatchProgress(done: done, total: total, finished: true))
        guard enabled, done > 0 || drawn else { return }
        StatusLine.shared.finish(text(monotonicSeconds()))
        drawn = false
    }

    private func text(_ now: Double) -> String {
        let elapsed = max(now - started, 1e-9)
        let rate = Double(done) / elapsed
        var text = ""
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
        return text
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
