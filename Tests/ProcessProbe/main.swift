// The child the ParallelVMProcess tests spawn. It starts as a task process does (`childDidStart`), then
// does what its first argument says, reporting over the channel where there is something to report.
import Glibc
import ParallelVMProcess

/// The variable the tests name in `ChildProcess.spawn(channelVariable:)`.
let channelVariable = "VM_PROBE_CHANNEL"

func complain(_ message: String) {
    let line = Array("vm-process-probe: \(message)\n".utf8)
    _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

let channelBefore = getenv(channelVariable).map { String(cString: $0) } ?? "<unset>"
let channel: MessageChannel
do {
    guard let opened = try ChildProcess.childDidStart(channelVariable: channelVariable) else {
        complain("\(channelVariable) is not set; run me through ChildProcess.spawn")
        exit(64)
    }
    channel = opened
} catch {
    complain("\(error)")
    exit(65)
}

let arguments = CommandLine.arguments.dropFirst()
switch arguments.first ?? "" {
case "echo":
    // Sends every frame back until the parent closes the channel.
    while let frame = try? channel.receive() { try channel.send(frame) }
case "environment":
    let after = getenv(channelVariable).map { String(cString: $0) } ?? "<unset>"
    try channel.send(Array("\(channelBefore) \(after)".utf8))
case "descriptors":
    let list = ChildProcess.openDescriptors().sorted().map(String.init).joined(separator: " ")
    try channel.send(Array(list.utf8))
case "hold":
    // Waits for the parent to close the channel (or for a signal).
    while (try? channel.receive()) != nil {}
case "exit":
    exit(Int32(arguments.dropFirst().first ?? "0") ?? 0)
case "trap":
    fatalError("the probe was told to trap")
case "abort":
    abort()
case "allocate":
    // Touches every block, so that without a limit this would really use memory.
    var blocks: [[UInt8]] = []
    while true { blocks.append([UInt8](repeating: 1, count: 16 << 20)) }
default:
    complain("unknown command \(arguments.first ?? "")")
    exit(66)
}
