import Foundation
import ParallelVM

/// One VM event as `/api/events` and the live stream send it: a flat JSON object with a `type` and the
/// fields that kind of event has.
struct EventRecord: Codable, Sendable {
    var sequence: Int
    /// Seconds since 1970.
    var time: Double
    var type: String
    var task: String?
    var slot: Int?
    var host: String?
    var slots: [Int]?
    var function: String?
    var arguments: String?
    var detail: String?
    var files: Int?
    var bytes: Int?
    var seconds: Double?
    var done: Int?
    var total: Int?
    var finished: Bool?

    init(_ event: VMEvent) {
        sequence = event.sequence
        time = event.time.timeIntervalSince1970
        switch event.kind {
        case .hostUp(let host, let slots):
            type = "hostUp"
            self.host = host.name
            self.slots = slots
        case .hostDown(let host):
            type = "hostDown"
            self.host = host.name
        case .slotBusy(let slot, let host, let task):
            type = "slotBusy"
            self.slot = slot
            self.host = host.name
            self.task = task.description
        case .slotFree(let slot, let host):
            type = "slotFree"
            self.slot = slot
            self.host = host.name
        case .taskSpawned(let start):
            type = "taskSpawned"
            task = start.task.description
            host = start.host.name
            function = start.function
            arguments = start.arguments
        case .taskResult(let task, let function):
            type = "taskResult"
            self.task = task.description
            self.function = function
        case .taskFailed(let task, let function, let message):
            type = "taskFailed"
            self.task = task.description
            self.function = function
            detail = message
        case .taskCrashed(let task, let function, let detail):
            type = "taskCrashed"
            self.task = task.description
            self.function = function
            self.detail = detail
        case .taskTimedOut(let task, let function, let seconds):
            type = "taskTimedOut"
            self.task = task.description
            self.function = function
            self.seconds = seconds
        case .taskKilled(let task, let function):
            type = "taskKilled"
            self.task = task.description
            self.function = function
        case .taskExit(let task):
            type = "taskExit"
            self.task = task.description
        case .storagePrepared(let task, let host, let files, let bytes, let seconds):
            type = "storagePrepared"
            self.task = task.description
            self.host = host.name
            self.files = files
            self.bytes = bytes
            self.seconds = seconds
        case .mirrorSent(let host, let files, let bytes, _, let seconds):
            type = "mirrorSent"
            self.host = host.name
            self.files = files
            self.bytes = bytes
            self.seconds = seconds
        case .dispatchProgress(let done, let total, let finished):
            type = "dispatchProgress"
            self.done = done
            self.total = total
            self.finished = finished
        }
    }
}
