import Foundation
import Hummingbird
import ParallelVM

extension VMMonitor {
    /// The pages, the API and the metrics, every one behind the token check.
    func makeRouter() -> Router<BasicRequestContext> {
        let router = Router()
        for page in ["/", "/tasks", "/hosts/{name}"] {
            router.get(RouterPath(page)) { [weak self] request, _ -> Response in
                guard let self else { return VMMonitor.gone }
                if let refusal = self.refusal(request) { return refusal }
                return VMMonitor.response(.ok, type: "text/html; charset=utf-8", Page.html)
            }
        }
        router.get("/api/status") { [weak self] request, _ -> Response in
            guard let self else { return VMMonitor.gone }
            if let refusal = self.refusal(request) { return refusal }
            return VMMonitor.json(self.state.status())
        }
        router.get("/api/events") { [weak self] request, _ -> Response in
            guard let self else { return VMMonitor.gone }
            if let refusal = self.refusal(request) { return refusal }
            let after = request.uri.queryParameters["after"].map(String.init) ?? "0"
            guard let sequence = Int(after) else {
                return VMMonitor.error(.badRequest, "after must be an event number, not '\(after)'")
            }
            return VMMonitor.json(self.state.events(after: sequence))
        }
        router.get("/api/stream") { [weak self] request, _ -> Response in
            guard let self else { return VMMonitor.gone }
            if let refusal = self.refusal(request) { return refusal }
            let frames = self.broadcaster.subscribe()
            return Response(
                status: .ok,
                headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                body: ResponseBody { writer in
                    for await frame in frames { try await writer.write(ByteBuffer(string: frame)) }
                    try await writer.finish(nil)
                }
            )
        }
        router.post("/api/tasks/{task}/kill") { [weak self] request, context -> Response in
            guard let self else { return VMMonitor.gone }
            if let refusal = self.refusal(request) { return refusal }
            let text = context.parameters.get("task") ?? ""
            guard let task = TaskID(text) else {
                return VMMonitor.error(.badRequest, "'\(text)' is not a task ID (SLOT:NUMBER, such as 1:7)")
            }
            do {
                try self.vm.kill(task)
            } catch {
                return VMMonitor.error(.conflict, "\(error)")
            }
            return VMMonitor.json(["killing": task.description], status: .accepted)
        }
        router.get("/metrics") { [weak self] request, _ -> Response in
            guard let self else { return VMMonitor.gone }
            if let refusal = self.refusal(request) { return refusal }
            return VMMonitor.response(.ok, type: "text/plain; version=0.0.4; charset=utf-8", Metrics.render(self.state))
        }
        return router
    }

    /// A 401 answer when the monitor has a token and the request does not carry it.
    func refusal(_ request: Request) -> Response? {
        guard let token else { return nil }
        let bearer = request.headers[.authorization].flatMap { header -> String? in
            header.hasPrefix("Bearer ") ? String(header.dropFirst(7)) : nil
        }
        let query = request.uri.queryParameters["token"].map(String.init)
        if bearer == token || query == token { return nil }
        return VMMonitor.error(
            .unauthorized,
            "this monitor needs its token: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN to the address"
        )
    }

    static var gone: Response { error(.serviceUnavailable, "the monitor has stopped") }

    static func response(_ status: HTTPResponse.Status, type: String, _ text: String) -> Response {
        Response(
            status: status,
            headers: [.contentType: type],
            body: ResponseBody(byteBuffer: ByteBuffer(string: text))
        )
    }

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .secondsSince1970
        guard let data = try? encoder.encode(value) else {
            return error(.internalServerError, "the answer could not be encoded as JSON")
        }
        return response(status, type: "application/json", String(decoding: data, as: UTF8.self))
    }

    static func error(_ status: HTTPResponse.Status, _ message: String) -> Response {
        json(["error": message], status: status)
    }
}
