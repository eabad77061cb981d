import Glibc

/// How a process waits for messages.
///
/// MPI's own blocking calls spin at 100% of a core. A VM process instead polls with a matched probe and
/// pauses between polls as this policy says, so that idle workers can leave their core to others. After
/// `spin`, an idle worker on the spawner's host (one waiting for its next task) blocks on a doorbell (a datagram socket)
/// that the spawner rings, instead of sleeping `sleep` between polls: it costs no CPU while idle and
/// wakes within microseconds. `busy` never stops spinning.
public struct WaitPolicy: Sendable, Equatable, CustomStringConvertible {
    /// How long to keep polling without pausing after the last message, in seconds.
    public var spin: Double
    /// How long to sleep between polls once the spin time is over, in seconds (0 means yield the core only).
    public var sleep: Double

    /// Creates a policy.
    public init(spin: Double, sleep: Double) {
        self.spin = spin
        self.sleep = sleep
    }

    /// Poll continuously, yielding the core between polls: lowest latency, a full core per waiting process.
    public static let busy = WaitPolicy(spin: .infinity, sleep: 0)
    /// Poll for 2 ms, then sleep 50 µs between polls, or block on the doorbell when idle on the spawner's host.
    public static let adaptive = WaitPolicy(spin: 0.002, sleep: 0.000_05)

    /// Reads `PARALLELVM_WAIT`: `busy`, `adaptive`, or `SPIN_US,SLEEP_US` in microseconds.
    public static func fromEnvironment(_ environment: [String: String]) throws(VMError) -> WaitPolicy {
        guard let text = environment["PARALLELVM_WAIT"], !text.isEmpty else { return .adaptive }
        switch text {
        case "busy": return .busy
        case "adaptive": return .adaptive
        default:
            let parts = text.split(separator: ",")
            guard parts.count == 2, let spin = Double(parts[0]), let sleep = Double(parts[1]), spin >= 0, sleep >= 0
            else {
                throw VMError(.configuration, "PARALLELVM_WAIT=\(text) is not 'busy', 'adaptive' or 'SPIN_US,SLEEP_US'")
            }
            return WaitPolicy(spin: spin / 1e6, sleep: sleep / 1e6)
        }
    }

    public var description: String {
        spin.isInfinite ? "busy" : "spin \(Int(spin * 1e6)) µs, then sleep \(Int(sleep * 1e6)) µs"
    }
}

/// The pause between two polls of one wait.
struct Backoff {
    let policy: WaitPolicy
    private var polls = 0
    private var idleSince = 0.0
    private var sleeping = false

    /// Replaces the sleep once the spin time is over (the doorbell wait of an idle worker). It returns
    /// whether it was woken on purpose; then polling spins again, since the message may take a few polls
    /// to show (and a ring meant for a moment we were still spinning must not put us back to sleep).
    private let idleWait: (() -> Bool)?

    init(_ policy: WaitPolicy, idleWait: (() -> Bool)? = nil) {
        self.policy = policy
        self.idleWait = idleWait
    }

    mutating func pause() {
        polls += 1
        // The first polls are free: most replies arrive within microseconds.
        if polls < 64 { return }
        if polls == 64 { idleSince = monotonicSeconds() }
        if sleeping {
            if let idleWait {
                if idleWait() {
                    sleeping = false
                    polls = 0
                }
                return
            }
            var interval = timespec(tv_sec: 0, tv_nsec: Int(policy.sleep * 1e9))
            nanosleep(&interval, nil)
            return
        }
        // Reading the clock costs more than a poll, so look at it every 16th pause only.
        if policy.sleep > 0 || idleWait != nil, polls & 15 == 0, monotonicSeconds() - idleSince > policy.spin {
            sleeping = true
        }
        sched_yield()
    }
}
