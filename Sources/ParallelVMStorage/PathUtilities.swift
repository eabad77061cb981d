import Foundation
import Glibc

/// Small path helpers shared by the storage code. They work on `String`s with `/` separators because
/// the storage code only targets POSIX systems and must behave identically on every host.
package enum PathUtil {
    /// Human readable text for an errno value, e.g. "No space left on device (errno 28)".
    static func errnoText(_ err: Int32) -> String {
        "\(String(cString: strerror(err))) (errno \(err))"
    }

    /// The current user's home folder: `HOME` from the environment, else the password database.
    static func homeFolder(environment: [String: String]) -> String {
        if let home = environment["HOME"], !home.isEmpty { return home }
        if let pw = getpwuid(geteuid()), let dir = pw.pointee.pw_dir { return String(cString: dir) }
        return "/"
    }

    /// Expands a leading `~` or `~user` the way a shell does; other paths are returned unchanged.
    static func expandTilde(_ path: String, environment: [String: String]) -> String {
        guard path.hasPrefix("~") else { return path }
        let afterTilde = path.dropFirst()
        let slash = afterTilde.firstIndex(of: "/") ?? afterTilde.endIndex
        let user = String(afterTilde[..<slash])
        let rest = String(afterTilde[slash...])
        if user.isEmpty { return homeFolder(environment: environment) + rest }
        if let pw = getpwnam(user), let dir = pw.pointee.pw_dir { return String(cString: dir) + rest }
        return path  // unknown user: leave it, later checks report the path as given
    }

    /// Splits a path into its non-empty components (so `//a/./b/` gives `["a", ".", "b"]`).
    static func components(_ path: String) -> [Substring] {
        path.split(separator: "/", omittingEmptySubsequences: true)
    }

    /// Makes a path absolute (relative to the current folder) and removes `.`, `..` and duplicate
    /// slashes lexically, without touching the filesystem. `..` at the root stays at the root.
    static func standardize(_ path: String) -> String {
        var full = path
        if !full.hasPrefix("/") { full = currentDirectory() + "/" + full }
        var stack: [Substring] = []
        for c in components(full) {
            if c == "." { continue }
            if c == ".." {
                if !stack.isEmpty { stack.removeLast() }
                continue
            }
            stack.append(c)
        }
        return "/" + stack.joined(separator: "/")
    }

    /// The process's current folder, or "/" when it cannot be determined.
    static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = buffer.count
        guard SystemCall.pointer("getcwd", { getcwd(&buffer, count) }).succeeded else { return "/" }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// `realpath(3)` as a Swift string, or nil when the path does not exist (or cannot be resolved).
    static func realPath(_ path: String) -> String? {
        guard case .success(let resolved) = SystemCall.pointer("realpath", { realpath(path, nil) }) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// Canonicalises a path: `~` expanded, made absolute, symlinks resolved with `realpath` for the
    /// longest prefix that exists, and the rest (which does not exist yet) standardised lexically.
    /// Resolving the existing part matters so that a symlinked mirrored root matches its real location.
    static func canonicalize(_ path: String, environment: [String: String]) -> String {
        let absolute = standardizeKeepingDotDot(expandTilde(path, environment: environment))
        if let resolved = realPath(absolute) { return resolved }
        // Walk up to the longest existing prefix; `..` in the missing tail is resolved lexically.
        var comps = components(absolute)
        var tail: [Substring] = []
        while !comps.isEmpty {
            tail.insert(comps.removeLast(), at: 0)
            let prefix = "/" + comps.joined(separator: "/")
            if let resolved = realPath(prefix) {
                return standardize(resolved + "/" + tail.joined(separator: "/"))
            }
        }
        return standardize(absolute)
    }

    /// Makes a path absolute but keeps `..` for `realpath` to resolve (`a/link/..` is not `a` when
    /// `link` is a symlink).
    private static func standardizeKeepingDotDot(_ path: String) -> String {
        path.hasPrefix("/") ? path : currentDirectory() + "/" + path
    }

    /// True when the component contains a glob(3) metacharacter.
    static func hasGlob<S: StringProtocol>(_ s: S) -> Bool {
        s.contains { $0 == "*" || $0 == "?" || $0 == "[" }
    }

    /// Splits a path at the first component that contains a glob character: the literal folder prefix
    /// (which can be canonicalised) and the pattern (kept verbatim). Without glob the pattern is empty.
    static func splitGlob(_ path: String) -> (prefix: String, pattern: String) {
        let comps = components(path)
        guard let first = comps.firstIndex(where: { hasGlob($0) }) else { return (path, "") }
        let prefix = (path.hasPrefix("/") ? "/" : "") + comps[..<first].joined(separator: "/")
        return (prefix.isEmpty ? "." : prefix, comps[first...].joined(separator: "/"))
    }

    /// True when `root` is `path` or a folder containing it, comparing whole components
    /// (so `/home/ab` contains `/home/ab/x` but not `/home/abc`).
    static func isComponentPrefix(_ root: String, of path: String) -> Bool {
        if root == "/" { return path.hasPrefix("/") }
        return path == root || path.hasPrefix(root + "/")
    }

    /// Normalises a path that must stay inside a folder (a mirror target, a suffix, a startup folder):
    /// removes `.` and empty components, resolves `..` lexically and returns nil when it would climb
    /// above the folder. Returns "" for the folder itself.
    static func normalizeInside(_ relative: String) -> String? {
        var stack: [Substring] = []
        for c in components(relative) {
            if c == "." { continue }
            if c == ".." {
                if stack.isEmpty { return nil }
                stack.removeLast()
                continue
            }
            stack.append(c)
        }
        return stack.joined(separator: "/")
    }

    /// Joins a folder and a relative path ("" meaning the folder itself).
    static func join(_ folder: String, _ relative: String) -> String {
        if relative.isEmpty { return folder }
        return folder.hasSuffix("/") ? folder + relative : folder + "/" + relative
    }

    /// The last component of a path ("/" for the root).
    static func lastComponent(_ path: String) -> String {
        components(path).last.map(String.init) ?? "/"
    }

    /// The folder containing an absolute path ("/" for top-level entries).
    static func parent(_ path: String) -> String {
        let comps = components(path)
        return "/" + comps.dropLast().joined(separator: "/")
    }

    /// This host's name as `gethostname` reports it.
    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        let count = buffer.count - 1
        guard SystemCall.value("gethostname", { gethostname(&buffer, count) }).succeeded else { return "localhost" }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// The effective user's login name (used for the per-user folder), or `uid<N>` when unknown.
    static func userName() -> String {
        if let pw = getpwuid(geteuid()), let name = pw.pointee.pw_name { return String(cString: name) }
        return "uid\(geteuid())"
    }

    /// Replaces characters that do not belong in a single file name component (e.g. `/` in a host name).
    static func sanitizeComponent(_ s: String) -> String {
        let cleaned = String(
            s.map { c -> Character in
                (c.isASCII && (c.isLetter || c.isNumber || c == "-" || c == "_" || c == ".")) ? c : "_"
            }
        )
        return cleaned.isEmpty || cleaned.hasPrefix(".") ? "_" + cleaned : cleaned
    }
}
