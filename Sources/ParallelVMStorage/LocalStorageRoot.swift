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
    /// - Parameters:
    ///   - userName: overrides the login name in the per-user folder's name (tests).
    ///   - create: false resolves the paths without creating anything (for looking at what is there).
    /// - Throws: `StorageError.unwritableRoot` naming the path and the errno text.
    package init(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        userName: String? = nil,
        create: Bool = true
    ) throws {
        var raw = environment[Self.variable] ?? ""
        if raw.isEmpty { raw = environment["TMPDIR"] ?? "" }
        if raw.isEmpty { raw = "/tmp" }
        let absolute = PathUtil.canonicalize(raw, environment: environment)
        if create { try Self.makeDirectories(absolute) }
        // Canonicalise again now that it exists, so symlinks in the created path are resolved.
        self.path = PathUtil.realPath(absolute) ?? absolute
        self.userFolderName = "parallelvm-" + PathUtil.sanitizeComponent(userName ?? PathUtil.userName())
        if create { try ensureUserFolder() }
    }

    /// Creates the per-user folder if needed and checks it is a real directory owned by us.
    ///
    /// Called before every preparation because `clearLocalStorage` may have removed it. A symlink or a
    /// folder owned by someone else is refused: in a shared `/tmp` another user could plant either.
    ///
    /// Another rank of this host may be clearing and remove the folder between the `mkdir` that finds
    /// it and the look at it; it is then made again (a few times at most).
    func ensureUserFolder() throws {
        let folder = userFolder
        let subject = "local storage folder"
        var st = stat()
        for attempt in 1...5 {
            let made = SystemCall.value("mkdir") { mkdir(folder, 0o700) }
            if !made.failed(with: EEXIST) {
                try made.get("created", path: folder, subject: subject, code: .unwritableRoot)
            }
            let examined = SystemCall.value("lstat") { lstat(folder, &st) }
            if examined.failed(with: ENOENT) && attempt < 5 { continue }
            try examined.get("examined", path: folder, subject: subject, code: .unwritableRoot)
            break
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw StorageError(
                .unwritableRoot,
                path: folder,
                reason: "is not a directory (a symlink or file is in the way)",
                subject: subject
            )
        }
        guard st.st_uid == geteuid() else {
            throw StorageError(
                .unwritableRoot,
                path: folder,
                reason: "belongs to uid \(st.st_uid), not to us (uid \(geteuid()))",
                subject: subject
            )
        }
        try SystemCall.value("access") { access(folder, W_OK | X_OK) }
            .get("written", path: folder, subject: subject, code: .unwritableRoot)
    }

    /// Opens the per-user folder (never through a symlink) for fd-relative work inside it.
    func openUserFolder() throws -> Int32 {
        try SystemCall.value("open") { open(userFolder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            .get("opened", path: userFolder, subject: "local storage folder", code: .unwritableRoot)
    }

    /// `mkdir -p`: creates every missing folder of an absolute path (mode 0777 minus umask, like mkdir(1)).
    private static func makeDirectories(_ absolute: String) throws {
        var current = ""
        for component in PathUtil.components(absolute) {
            current += "/" + component
            let made = SystemCall.value("mkdir") { mkdir(current, 0o777) }
            guard let failure = made.failure else { continue }
            var st = stat()
            // EEXIST is fine when it is a directory (or a symlink to one: stat follows it).
            if failure.errno == EEXIST, SystemCall.value("stat", { stat(current, &st) }).succeeded,
                (st.st_mode & S_IFMT) == S_IFDIR
            {
                continue
            }
            throw StorageError(
                .unwritableRoot,
                path: absolute,
                reason: "cannot be created (\(current): \(failure.errno == EEXIST ? "not a directory" : failure.text))",
                subject: "local storage root",
                call: "\(failure.call)",
                errnoCode: failure.errno
            )
        }
    }
}
