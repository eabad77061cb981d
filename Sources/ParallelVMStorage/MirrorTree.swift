import Crypto
import Glibc
import ParallelVMCodec

/// What a mirror map names under folders that the workers cannot see (`PARALLEL_UNSHARED_STORAGE`): the
/// folders, files and links to make in a task folder, with each file's content named by its SHA-256.
///
/// The spawner makes it once per VM object, when the VM is created, by reading the files; the spawner then
/// sends it, and the contents a host does not have yet, to each host once (see `MirrorCache`). Items come
/// in depth-first order, every folder before what it holds, with paths relative to the task folder.
package struct MirrorTree: Codable, Sendable, Hashable {
    package enum Kind: UInt8, Codable, Sendable {
        case directory, file, symlink
    }

    /// One entry of the task folder.
    package struct Item: Codable, Sendable, Hashable {
        /// Relative to the task folder, normalised, never empty.
        var path: String
        var kind: Kind
        /// Permission bits of a folder.
        var mode: UInt32
        /// A file's index in `blobs`.
        var blob: Int
        /// A symbolic link's target, as read.
        var linkTarget: String
    }

    /// One distinct content: its SHA-256, size and whether it is executable (a hard link shares its mode,
    /// so content that is executable in one place and not in another is kept twice).
    package struct Blob: Codable, Sendable, Hashable {
        package var digest: [UInt8]
        package var size: UInt64
        package var executable: Bool

        /// The blob's file name in a cache: the digest in hex, and `x` when executable.
        var name: String { hexString(digest) + (executable ? "x" : "") }
    }

    var items: [Item]
    package var blobs: [Blob]

    /// Files in the tree (links to the same content count each).
    package var files: Int { items.count { $0.kind == .file } }
    /// Bytes of the distinct contents.
    package var bytes: UInt64 { blobs.reduce(0) { $0 + $1.size } }
}

/// A `MirrorTree` as the spawner keeps it: the tree, its encoding and digest, and where each blob's content
/// is on the spawner's host.
package struct MirrorSnapshot: Sendable {
    package let tree: MirrorTree
    /// The tree in the binary codec: what travels, and what its digest is of.
    package let encoded: [UInt8]
    /// SHA-256 of `encoded`, in hex: the tree's name on every host.
    package let digest: String
    /// The spawner path of each blob's content, by blob index.
    package let sources: [String]

    /// What a spawn request carries to name this snapshot.
    package var reference: SentTree { SentTree(digest: digest, files: tree.files, bytes: tree.bytes) }
}

/// The name a spawn request gives the sent tree its task folder is made from.
package struct SentTree: Codable, Sendable, Hashable {
    /// The tree's digest (hex), its name in the host's mirror cache.
    var digest: String
    /// Files and bytes, for reports.
    var files: Int
    var bytes: UInt64
}

/// Builds a `MirrorSnapshot` from spawner paths.
struct MirrorTreeBuilder {
    private var items: [MirrorTree.Item] = []
    private var blobs: [MirrorTree.Blob] = []
    private var sources: [String] = []
    private var blobIndex: [MirrorTree.Blob: Int] = [:]
    private var directories: Set<String> = []
    /// Index in `items` of each file and link, so that a later mirror entry's file replaces an earlier one.
    private var leaves: [String: Int] = [:]
    private var buffer = [UInt8](repeating: 0, count: 1 << 20)

    /// Adds what `source` (a spawner path a glob matched, or a path named as is) holds, under `target`
    /// (relative to the task folder; "" is the folder itself): a folder as a tree, a file as a file.
    mutating func add(source: String, target: String, followLinks: Bool) throws {
        addParents(of: target)
        var st = stat()
        let examined =
            followLinks
            ? SystemCall.value("stat") { stat(source, &st) } : SystemCall.value("lstat") { lstat(source, &st) }
        if let failure = examined.failure {
            throw failure.storageError("read", path: source, subject: "mirror source", code: .missingSource)
        }
        try add(source, stat: st, as: PathUtil.join(target, PathUtil.lastComponent(source)), topLevel: true)
    }

    private mutating func addParents(of target: String) {
        var path = ""
        for component in PathUtil.components(target) {
            path = path.isEmpty ? String(component) : path + "/" + component
            if directories.insert(path).inserted {
                items.append(MirrorTree.Item(path: path, kind: .directory, mode: 0o777, blob: -1, linkTarget: ""))
            }
        }
    }

    private mutating func add(_ source: String, stat st: stat, as path: String, topLevel: Bool) throws {
        let relative = path.hasPrefix("/") ? String(path.dropFirst()) : path
        switch st.st_mode & S_IFMT {
        case S_IFDIR:
            if directories.insert(relative).inserted {
                items.append(
                    MirrorTree.Item(
                        path: relative,
                        kind: .directory,
                        mode: UInt32(st.st_mode & 0o7777),
                        blob: -1,
                        linkTarget: ""
                    )
                )
            }
            let fd = try SystemCall.value("open") { open(source, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
                .get("opened", path: source, subject: "mirror source")
            let names: [String]
            do throws(SystemCallError) {
                names = try DirectoryStream(taking: fd).names()
            } catch {
                throw error.storageError("listed", path: source, subject: "mirror source")
            }
            for name in names {
                let child = PathUtil.join(source, name)
                var childStat = stat()
                try SystemCall.value("lstat") { lstat(child, &childStat) }
                    .get("read", path: child, subject: "mirror source")
                try add(child, stat: childStat, as: PathUtil.join(relative, name), topLevel: false)
            }
        case S_IFREG:
            let (digest, size) = try hash(source)
            let blob = MirrorTree.Blob(digest: digest, size: size, executable: st.st_mode & 0o111 != 0)
            let index: Int
            if let known = blobIndex[blob] {
                index = known
            } else {
                index = blobs.count
                blobs.append(blob)
                sources.append(source)
                blobIndex[blob] = index
            }
            addLeaf(MirrorTree.Item(path: relative, kind: .file, mode: 0, blob: index, linkTarget: ""))
        case S_IFLNK:
            var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let count = try SystemCall.value("readlink") { readlink(source, &target, Int(PATH_MAX)) }
                .get("read", path: source, subject: "mirror source")
            let text = String(decoding: target[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            addLeaf(MirrorTree.Item(path: relative, kind: .symlink, mode: 0, blob: -1, linkTarget: text))
        default:
            // Inside a tree, what cannot be mirrored (a socket, a FIFO, a device) is left out, as when copying.
            guard topLevel else { return }
            throw StorageError(
                .unsupportedFileType,
                path: source,
                reason: "is not a regular file, a directory or a symbolic link",
                subject: "mirror source"
            )
        }
    }

    private mutating func addLeaf(_ item: MirrorTree.Item) {
        if let index = leaves[item.path] {
            items[index] = item
        } else {
            leaves[item.path] = items.count
            items.append(item)
        }
    }

    /// SHA-256 and size of a file's content.
    private mutating func hash(_ path: String) throws -> ([UInt8], UInt64) {
        let fd = try SystemCall.value("open") { open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) }
            .get("opened", path: path, subject: "mirror source")
        defer { SystemCall.close(fd) }
        var hasher = SHA256()
        var size: UInt64 = 0
        let capacity = buffer.count
        while true {
            let n = try buffer.withUnsafeMutableBytes { raw in
                try SystemCall.value("read") { read(fd, raw.baseAddress, capacity) }
                    .get("read", path: path, subject: "mirror source")
            }
            if n == 0 { break }
            buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            size += UInt64(n)
        }
        return (Array(hasher.finalize()), size)
    }

    /// The snapshot of everything added.
    func snapshot() throws -> MirrorSnapshot {
        let tree = MirrorTree(items: items, blobs: blobs)
        let encoded: [UInt8]
        do {
            encoded = try BinaryEncoder.encode(tree)
        } catch {
            throw StorageError(
                .ioFailure,
                path: "mirror map",
                reason: "could not be encoded: \(error)",
                subject: "unshared mirror"
            )
        }
        return MirrorSnapshot(
            tree: tree,
            encoded: encoded,
            digest: hexString(Array(SHA256.hash(data: encoded))),
            sources: sources
        )
    }
}

/// Lowercase hexadecimal digits of `bytes`.
func hexString(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    out.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 15)])
    }
    return String(decoding: out, as: UTF8.self)
}
