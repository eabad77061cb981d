import Crypto
import Glibc

/// What a mirror map names under folders that the workers cannot see (`PARALLEL_UNSHARED_STORAGE`): the
/// folders, files and links to make in a task folder, with each file's content named by its SHA-256.
///
/// The spawner makes it once per VM object, when the VM is created, by reading the files; the spawner then
/// sends it, and the contents a host does not have yet, to each host once (see `MirrorCache`). Items come
/// in depth-first order, every folder before what it holds, with paths relative to the task folder.
package struct MirrorTree: Sendable, Hashable {
    package enum Kind: UInt8, Sendable {
        case directory, file, symlink
    }

    /// One entry of the task folder.
    package struct Item: Sendable, Hashable {
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
    package struct Blob: Sendable, Hashable {
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
    func snapshot() -> MirrorSnapshot {
        let tree = MirrorTree(items: items, blobs: blobs)
        let encoded = tree.encoded()
        return MirrorSnapshot(
            tree: tree,
            encoded: encoded,
            digest: hexString(Array(SHA256.hash(data: encoded))),
            sources: sources
        )
    }
}

// A tree of 20,000 files travels and is read by every task made from it, so it has a compact format of its
// own rather than the Codable one (which took a fifth of a second for such a tree):
//
//   "PVMT" 1 | blob count: UInt32 | per blob: SHA-256 (32 bytes), size: UInt64, executable: UInt8
//            | item count: UInt32 | per item: kind: UInt8, path | a folder's mode: UInt32, a file's blob: UInt32,
//                                              or a link's target
//
// integers little-endian, strings as a UInt32 byte count and UTF-8.
extension MirrorTree {
    private static let magic: [UInt8] = Array("PVMT".utf8) + [1]

    /// Whether a relative path names something inside its folder: components neither empty, `.` nor `..`.
    static func staysInside(_ path: String) -> Bool {
        var path = path
        return path.withUTF8 { utf8 in
            guard !utf8.isEmpty else { return false }
            var start = 0
            for index in 0...utf8.count where index == utf8.count || utf8[index] == 0x2F {
                let length = index - start
                if length == 0 { return false }
                if utf8[start] == 0x2E && (length == 1 || (length == 2 && utf8[start + 1] == 0x2E)) { return false }
                start = index + 1
            }
            return true
        }
    }

    /// The tree in its wire format.
    func encoded() -> [UInt8] {
        var out = Self.magic
        out.reserveCapacity(64 + blobs.count * 41 + items.count * 48)
        func append<I: FixedWidthInteger>(_ value: I) {
            withUnsafeBytes(of: value.littleEndian) { out.append(contentsOf: $0) }
        }
        func append(_ text: String) {
            var text = text
            text.withUTF8 { utf8 in
                append(UInt32(utf8.count))
                out.append(contentsOf: utf8)
            }
        }
        append(UInt32(blobs.count))
        for blob in blobs {
            out.append(contentsOf: blob.digest)
            append(blob.size)
            out.append(blob.executable ? 1 : 0)
        }
        append(UInt32(items.count))
        for item in items {
            out.append(item.kind.rawValue)
            append(item.path)
            switch item.kind {
            case .directory: append(item.mode)
            case .file: append(UInt32(item.blob))
            case .symlink: append(item.linkTarget)
            }
        }
        return out
    }

    /// Reads a tree in its wire format.
    /// - Throws: `StorageError` (`.ioFailure`) naming `shownAs` when the bytes are not such a tree.
    init(decoding bytes: [UInt8], shownAs: String) throws {
        func malformed(_ what: String) -> StorageError {
            StorageError(.ioFailure, path: shownAs, reason: "is not a mirror tree (\(what))", subject: "mirror tree")
        }
        var blobs: [Blob] = []
        var items: [Item] = []
        try bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) throws in
            var offset = 0
            func take(_ count: Int) throws -> UnsafeRawBufferPointer {
                guard count >= 0, raw.count - offset >= count else { throw malformed("it ends early") }
                defer { offset += count }
                return UnsafeRawBufferPointer(rebasing: raw[offset..<offset + count])
            }
            func integer<I: FixedWidthInteger>(_: I.Type) throws -> I {
                I(littleEndian: try take(MemoryLayout<I>.size).loadUnaligned(as: I.self))
            }
            func text() throws -> String { String(decoding: try take(Int(try integer(UInt32.self))), as: UTF8.self) }
            guard Array(try take(Self.magic.count)) == Self.magic else { throw malformed("wrong header") }
            let blobCount = Int(try integer(UInt32.self))
            guard blobCount <= raw.count / 41 else { throw malformed("too many contents") }
            blobs.reserveCapacity(blobCount)
            for _ in 0..<blobCount {
                let digest = Array(try take(32))
                let size = try integer(UInt64.self)
                blobs.append(Blob(digest: digest, size: size, executable: try integer(UInt8.self) != 0))
            }
            let itemCount = Int(try integer(UInt32.self))
            guard itemCount <= raw.count / 5 else { throw malformed("too many entries") }
            items.reserveCapacity(itemCount)
            for _ in 0..<itemCount {
                guard let kind = Kind(rawValue: try integer(UInt8.self)) else { throw malformed("an unknown kind") }
                let path = try text()
                // It came over the network: a path must stay inside the task folder.
                guard Self.staysInside(path) else {
                    throw malformed("the path \(path) leaves the task folder")
                }
                var item = Item(path: path, kind: kind, mode: 0, blob: -1, linkTarget: "")
                switch kind {
                case .directory: item.mode = try integer(UInt32.self) & 0o7777
                case .file:
                    item.blob = Int(try integer(UInt32.self))
                    guard item.blob < blobCount else { throw malformed("a file without content") }
                case .symlink: item.linkTarget = try text()
                }
                items.append(item)
            }
            guard offset == raw.count else { throw malformed("bytes after its end") }
        }
        self.init(items: items, blobs: blobs)
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
