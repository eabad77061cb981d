internal import Glibc

/// Runs a call that reports failure as -1 with errno set, retrying it when a signal interrupted it.
///
/// Supervising processes means many blocking calls (`waitid`, `poll`, `read`) in a process that receives
/// signals (`SIGCHLD` at least), so `EINTR` is routine and never an error here.
@discardableResult
func checked<Result: FixedWidthInteger>(
    _ call: String,
    _ context: @autoclosure () -> String? = nil,
    retryOnInterrupt: Bool = true,
    _ body: () -> Result
) throws(ProcessError) -> Result {
    while true {
        let result = body()
        if result != -1 { return result }
        let number = errno
        if number == EINTR && retryOnInterrupt { continue }
        throw .systemCall(call, errno: number, context())
    }
}

/// Runs a call of the `posix_spawn` family, which returns the error number instead of setting errno.
func checkedErrorNumber(_ call: String, _ body: () -> Int32) throws(ProcessError) {
    let number = body()
    if number != 0 { throw .systemCall(call, errno: number) }
}

/// Glibc functions the Swift `Glibc` module does not import: `prctl` is variadic, and the `_np` spawn file
/// actions are behind `_GNU_SOURCE`. They are looked up once by name; a missing one (an older glibc) is `nil`
/// and the caller takes a fallback.
enum LinuxFunctions {
    /// `prctl(option, arg2, arg3, arg4, arg5)`. Glibc's prctl reads five integer arguments, so calling it
    /// through a fixed-arity pointer passes them in the same registers as the variadic call would.
    typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
    typealias AddClosefrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    typealias AddChdir =
        @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>)
        -> Int32

    typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32

    static let prctl: Prctl? = lookup("prctl")
    /// `pipe2` (glibc 2.9), for pipes that are close-on-exec from the start.
    static let pipe2: Pipe2? = lookup("pipe2")
    /// `posix_spawn_file_actions_addclosefrom_np` (glibc 2.34).
    static let addClosefrom: AddClosefrom? = lookup("posix_spawn_file_actions_addclosefrom_np")
    /// `posix_spawn_file_actions_addchdir_np` (glibc 2.29).
    static let addChdir: AddChdir? = lookup("posix_spawn_file_actions_addchdir_np")

    private static func lookup<Function>(_ name: String) -> Function? {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, name) else { return nil }
        return unsafeBitCast(symbol, to: Function.self)
    }
}

/// Linux `prctl` options (from `<linux/prctl.h>`, part of the kernel ABI).
enum PrctlOption {
    static let setParentDeathSignal: Int32 = 1
    static let setChildSubreaper: Int32 = 36
}

/// Calls `prctl`, throwing with errno on failure.
func prctl(_ option: Int32, _ argument: UInt, name: String) throws(ProcessError) {
    guard let function = LinuxFunctions.prctl else {
        throw ProcessError(.systemCall, "prctl(\(name)) is not available in this C library", call: "prctl")
    }
    try checked("prctl(\(name))") { function(option, argument, 0, 0, 0) }
}

/// Creates a pipe whose ends are close-on-exec, so that a child another thread spawns meanwhile does not
/// inherit them (an inherited write end would hide the end of file the drain waits for).
func closeOnExecPipe(_ context: @autoclosure () -> String) throws(ProcessError) -> (read: Int32, write: Int32) {
    var ends: [Int32] = [-1, -1]
    if let pipe2 = LinuxFunctions.pipe2 {
        try checked("pipe2", context()) { pipe2(&ends, O_CLOEXEC) }
    } else {
        try checked("pipe", context()) { pipe(&ends) }
        for fd in ends { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    }
    return (ends[0], ends[1])
}

/// Converts a duration to whole milliseconds for `poll`, rounding up so a short positive timeout never
/// becomes a busy zero, and clamping to what `poll` accepts.
func pollMilliseconds(_ duration: Duration) -> Int32 {
    let (seconds, attoseconds) = duration.components
    if seconds < 0 || (seconds == 0 && attoseconds <= 0) { return 0 }
    let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
    return Int32(clamping: milliseconds)
}

/// Sleeps the calling thread (not a task) for a short interval, for polling loops outside Swift concurrency.
func sleepThread(_ duration: Duration) {
    let (seconds, attoseconds) = duration.components
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) == -1 && errno == EINTR { request = remaining }
}

/// Closes a descriptor, ignoring errors: on Linux the descriptor is released even when close reports one,
/// so retrying would close someone else's.
func closeDescriptor(_ fd: Int32) {
    if fd >= 0 { _ = Glibc.close(fd) }
}
