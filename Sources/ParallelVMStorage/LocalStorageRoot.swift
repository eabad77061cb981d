import Foundation
import Glibc

/// The host-local folder under which task storage folders are created (`PARALLEL_LOCAL_STORAGE`),
/// and this user's private folder inside it.
///
/// Everything the storage code creates or removes lives inside `userFolder`; a per-user folder keeps
/// users sharing `/tmp` apart and lets `clearLocalStorage` remove exactly one user's files.
package struct LocalStorageRoot: Sendable, Hashable {
    /// Name of the environment variable holding the local storage root.
    package static let variable = "PARALLEL_LOCAL_STORAGE"

    /// The canonical root (`PARALLEL_LOCAL_STORAGE`, else `TMPDIR`, else `/tmp`).
    let path: String
    /// Name of this user's folder inside `path` (`parallelvm-<user>`).
    let userFolderName: String

    /// The per-user folder, `<path>/<userFolderName>`.
    var userFolder: String { PathUtil.join(path, userFolderName) }

    /// Resolves the root from `environment`, creates it (with missing parents) when it does not exist,
    /// canonicalises it and creates the per-user folder (mode 0700).
    /// - Parameter userName: overrides the login name in the per-user folder's name (tests).
    /// - Throws: `StorageError.unwritableRoot` naming the path and the errno text.
    package init(environment: [String: String] = ProcessInfo.processInfo.environment, userName: String? = nil) throws {
        var raw = environment[Self.variable] ?? ""
        if raw.isEmpty { raw = environment["TMPDIR"] ?? "" }
        if raw.isEmpty { raw = "/tmp" }
        let absolute = PathUtil.canonicalize(raw, environment: environment)
        try Self.makeDirectories(absolute)
        // Canonicalise again now that it exists, so symlinks in the created path are resolved.
        self.path = PathUtil.realPath(absolute) ?? absolute
        self.userFolderName = "parallelvm-" + PathUtil.sanitizeComponent(userName ?? PathUtil.userName())
        try ensureUserFolder()
    }

    /// Creates the per-user folder if needed and checks it is a real directory owned by us.
    ///
    /// Called before every preparation because `clearLocalStorage` may have removed it. A symlink or a
    /// folder owned by someone else is refused: in a shared `/tmp` another user could plant either.
    func ensureUserFolder() throws {
        let folder = userFolder
        if mkdir(folder, 0o700) != 0 {
            let err = errno
            guard err == EEXIST else {
                throw StorageError.errno(
                    err,
                    "created",
                    path: folder,
                    subject: "local storage folder",
                    code: .unwritableRoot
                )
            }
        }
        var st = stat()
        guard lstat(folder, &st) == 0 else {
            throw StorageError.errno(
                errno,
                "examined",
                path: folder,
                subject: "local storage folder",
                code: .unwritableRoot
            )
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw StorageError(
                .unwritableRoot,
                path: folder,
                reason: "is not a directory (a symlink or file is in the way)",
                subject: "local storage folder"
            )
        }
        guard st.st_uid == geteuid() else {
            throw StorageError(
                .unwritableRoot,
                path: folder,
                reason: "belongs to uid \(st.st_uid), not to us (uid \(geteuid()))",
                subject: "local storage folder"
            )
        }
        guard access(folder, W_OK | X_OK) == 0 else {
            throw StorageError.errno(
                errno,
                "written",
                path: folder,
                subject: "local storage folder",
                code: .unwritableRoot
            )
        }
    }

    /// `mkdir -p`: creates every missing folder of an absolute path (mode 0777 minus umask, like mkdir(1)).
    private static func makeDirectories(_ absolute: String) throws {
        var current = ""
        for component in PathUtil.components(absolute) {
            current += "/" + component
            if mkdir(current, 0o777) == 0 { continue }
            let err = errno
            var st = stat()
            // EEXIST is fine when it is a directory (or a symlink to one: stat follows it).
            if err == EEXIST, stat(current, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR { continue }
            throw StorageError(
                .unwritableRoot,
                path: absolute,
                reason: "cannot be created (\(current): \(err == EEXIST ? "not a directory" : errnoText(err)))",
                subject: "local storage root"
            )
        }
    }
}
