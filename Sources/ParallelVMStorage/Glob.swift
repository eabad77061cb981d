import Glibc

/// Glob expansion with glob(3), keeping literal folder names literal.
enum Glob {
    /// Expands `pattern` (relative, may be "") under the literal folder `literal`.
    ///
    /// `literal` is escaped before globbing, so a mirrored folder such as `/mnt/run[1]` on a worker is
    /// not mistaken for a pattern. Without a pattern the result is `[literal]` when it exists (as a
    /// file, folder or symlink, even a dangling one) and `[]` otherwise. Results are sorted.
    static func expand(literal: String, pattern: String) -> [String] {
        if pattern.isEmpty {
            var st = stat()
            return lstat(literal, &st) == 0 ? [literal] : []
        }
        let full = PathUtil.join(escape(literal), pattern)
        var g = glob_t()
        defer { globfree(&g) }
        guard glob(full, 0, nil, &g) == 0 else { return [] }  // GLOB_NOMATCH, or an unreadable folder
        var result: [String] = []
        result.reserveCapacity(Int(g.gl_pathc))
        for i in 0..<Int(g.gl_pathc) {
            if let p = g.gl_pathv[i] { result.append(String(cString: p)) }
        }
        return result
    }

    /// Backslash-escapes glob(3) metacharacters so the string matches only itself.
    static func escape(_ s: String) -> String {
        guard s.contains(where: { "*?[]\\".contains($0) }) else { return s }
        var out = ""
        for c in s {
            if "*?[]\\".contains(c) { out.append("\\") }
            out.append(c)
        }
        return out
    }
}
