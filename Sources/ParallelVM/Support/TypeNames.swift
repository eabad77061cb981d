import Synchronization

/// Qualified type names of message and result types, made once per type. `_typeName` builds its string
/// anew on every call, which costs more instructions than framing and sending a small message.
enum TypeNames {
    private static let cache = Mutex<[ObjectIdentifier: String]>([:])
    /// The name of `[UInt8]`, the type of a message sent as it is.
    static let bytes = _typeName([UInt8].self, qualified: true)

    /// `_typeName(type, qualified: true)`, from the cache after the first call for a type.
    static func qualified<T>(_ type: T.Type) -> String {
        if type == [UInt8].self { return bytes }
        let key = ObjectIdentifier(type)
        if let name = cache.withLock({ $0[key] }) { return name }
        let name = _typeName(type, qualified: true)
        cache.withLock { $0[key] = name }
        return name
    }
}
