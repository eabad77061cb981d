import Foundation

/// The Prometheus text exposition (format 0.0.4) of the monitor's figures; every series is named
/// `parallelvm_…`.
enum Metrics {
    static func render(_ state: MonitorState) -> String {
        let snapshot = state.metricsSnapshot()
        var text = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: String)]) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for sample in samples { text += "\(name)\(sample.labels) \(sample.value)\n" }
        }
        let counters = snapshot.counters
        family(
            "parallelvm_tasks_submitted_total",
            "counter",
            "Tasks spawned since the monitor started.",
            [("", "\(counters.submitted)")]
        )
        family("parallelvm_tasks_running", "gauge", "Tasks running now.", [("", "\(snapshot.running)")])
        family(
            "parallelvm_tasks_done_total",
            "counter",
            "Tasks that ended since the monitor started.",
            [("", "\(counters.done)")]
        )
        let outcomes = ["succeeded", "failed", "crashed", "timedOut", "killed", "exited"]
        family(
            "parallelvm_tasks_ended_total",
            "counter",
            "Tasks that ended, by how they ended.",
            outcomes.map { (labels(["outcome": $0]), "\(counters.outcomes[$0, default: 0])") }
        )
        family(
            "parallelvm_host_slots",
            "gauge",
            "Worker slots on a host.",
            snapshot.hosts.map { (labels(["host": $0.name]), "\($0.slots.count)") }
        )
        family(
            "parallelvm_host_slots_busy",
            "gauge",
            "Worker slots of a host running a task.",
            snapshot.hosts.map { (labels(["host": $0.name]), "\($0.tasks.count)") }
        )
        family(
            "parallelvm_host_tasks_done_total",
            "counter",
            "Tasks that ended on a host.",
            snapshot.hosts.map { (labels(["host": $0.name]), "\($0.done)") }
        )
        family(
            "parallelvm_host_up",
            "gauge",
            "1 while a host has worker ranks alive.",
            snapshot.hosts.map { (labels(["host": $0.name]), $0.up ? "1" : "0") }
        )
        family(
            "parallelvm_storage_files_total",
            "counter",
            "Files mirrored into task storage.",
            [("", "\(counters.storageFiles)")]
        )
        family(
            "parallelvm_storage_bytes_total",
            "counter",
            "Bytes mirrored into task storage.",
            [("", "\(counters.storageBytes)")]
        )
        family(
            "parallelvm_storage_seconds_total",
            "counter",
            "Seconds spent preparing task storage.",
            [("", number(counters.storageSeconds))]
        )
        family(
            "parallelvm_mirror_sent_bytes_total",
            "counter",
            "Bytes the spawner sent to hosts' mirror caches from its unshared folders.",
            [("", "\(counters.mirrorSentBytes)")]
        )
        if let progress = snapshot.progress {
            family(
                "parallelvm_dispatch_jobs_done",
                "gauge",
                "Jobs the current dispatch has finished.",
                [("", "\(progress.done)")]
            )
            if let total = progress.total {
                family("parallelvm_dispatch_jobs", "gauge", "Jobs of the current dispatch.", [("", "\(total)")])
            }
        }
        family("parallelvm_events_total", "counter", "VM events the monitor has read.", [("", "\(counters.events)")])
        family(
            "parallelvm_events_dropped_total",
            "counter",
            "VM events lost because the monitor read them too slowly.",
            [("", "\(snapshot.dropped)")]
        )
        return text
    }

    /// `{key="value",...}` with the values escaped as the format asks.
    static func labels(_ pairs: [String: String]) -> String {
        let inner = pairs.sorted { $0.key < $1.key }.map { key, value in
            let escaped = value.replacingOccurrences(of: "\\", with: "\\\\")
                .replacingOccurrences(of: "\"", with: "\\\"")
                .replacingOccurrences(of: "\n", with: "\\n")
            return "\(key)=\"\(escaped)\""
        }
        return "{" + inner.joined(separator: ",") + "}"
    }

    static func number(_ value: Double) -> String {
        value.isFinite ? "\(value)" : (value.isNaN ? "NaN" : (value > 0 ? "+Inf" : "-Inf"))
    }
}
