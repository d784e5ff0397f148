// A peer for `corecast bench --compare`: the broadcast server a C++ developer would write with
// uWebSockets (uWS::App on uSockets' epoll loop, one thread), fanning out with uWS's own pub/sub.
//
// A connection to `/publish` is the publisher: every text message it sends is published, as is,
// to one topic. Every other path is a subscriber: it joins the topic and is greeted with the same
// `{"type":"connected",...}` frame corecast sends, so the bench knows it is live. A subscriber
// whose unsent bytes pass `BACKPRESSURE_BYTES_MAX` loses messages (uWS drops them), which the
// bench counts as loss. There are no other limits and no protocol checks beyond uWS's: that is
// the point of the comparison.
//
// Build: see README.md beside this file. Run: `server PORT` (0 picks a free port); it prints
// `listening ws=127.0.0.1:PORT` and serves until killed.

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "App.h"

namespace {

// The one topic every subscriber joins.
constexpr std::string_view TOPIC = "broadcast";

// Unsent bytes a subscriber may hold before uWS drops its messages: 64 MiB, as the Bun peer.
constexpr unsigned int BACKPRESSURE_BYTES_MAX = 64 * 1024 * 1024;

// Largest message taken from the publisher, in bytes: 1 MiB, far above the bench's events.
constexpr unsigned int PAYLOAD_BYTES_MAX = 1024 * 1024;

// The greeting corecast sends, which the bench waits for before it counts a subscriber.
constexpr std::string_view HELLO =
    R"({"type":"connected","conn_id":"peer","shard":0,"server_time_ms":0,"heartbeat_s":0})";

// Nothing is kept per connection: the route says which role a connection has.
struct NoData {};

}  // namespace

int main(int argc, char **argv) {
    int port = argc > 1 ? std::atoi(argv[1]) : 0;
    uWS::App app;
    app.ws<NoData>("/publish",
                   {
                       .compression = uWS::DISABLED,
                       .maxPayloadLength = PAYLOAD_BYTES_MAX,
                       // No idle timeout and no pings, as the tokio peer: the bench's
                       // connections stay open for the whole run and nothing else is measured.
                       .idleTimeout = 0,
                       .sendPingsAutomatically = false,
                       .message =
                           [&app](auto *, std::string_view message, uWS::OpCode opCode) {
                               if (opCode == uWS::OpCode::TEXT) {
                                   app.publish(TOPIC, message, uWS::OpCode::TEXT);
                               }
                           },
                   })
        .ws<NoData>("/*",
                    {
                        .compression = uWS::DISABLED,
                        .maxPayloadLength = PAYLOAD_BYTES_MAX,
                        .idleTimeout = 0,
                        .maxBackpressure = BACKPRESSURE_BYTES_MAX,
                        .closeOnBackpressureLimit = false,
                        .sendPingsAutomatically = false,
                        .open =
                            [](auto *ws) {
                                ws->subscribe(TOPIC);
                                ws->send(HELLO, uWS::OpCode::TEXT);
                            },
                    })
        .listen("127.0.0.1", port, [](us_listen_socket_t *listening) {
            if (!listening) {
                std::fprintf(stderr, "uws peer: cannot listen on 127.0.0.1\n");
                std::exit(1);
            }
            int bound = us_socket_local_port(0, reinterpret_cast<us_socket_t *>(listening));
            std::printf("listening ws=127.0.0.1:%d\n", bound);
            std::fflush(stdout);
        })
        .run();
    return 0;
}
