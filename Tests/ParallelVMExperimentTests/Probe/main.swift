// The child the ParallelVMExperiment tests spawn: opens the experiment named by its arguments, writes
// "open" (or the error) on standard output, and holds the experiment open until it is killed.
import Glibc
import ParallelVMExperiment

func say(_ text: String) {
    let line = Array((text + "\n").utf8)
    _ = line.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
}

let arguments = CommandLine.arguments
guard arguments.count == 3 else {
    say("usage: vm-experiment-probe PARENT NAME")
    exit(64)
}
do {
    let experiment = try Experiment(name: arguments[2], in: arguments[1])
    try experiment.open()
    say("open")
    while true { pause() }
} catch {
    say("error: \(error)")
    exit(1)
}
