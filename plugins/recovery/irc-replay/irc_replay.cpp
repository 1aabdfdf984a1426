#include "irc_replay.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>

namespace switchboard::irc_replay {
namespace {

std::int64_t system_now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

/// One channel's recovery in one run; lives in the callbacks of its history requests.
struct ChannelRun : std::enable_shared_from_this<ChannelRun> {
    RecoveryContext* context = nullptr;
    ReplaySettings settings;
    std::string channel;
    std::optional<Cursor> cursor;
    std::optional<std::int64_t> disconnected_at;
    std::int64_t rejoined_at = 0;
    RecoveryReport report;
    std::uint32_t pages = 0;
    std::shared_ptr<IrcReplayPolicy::Outage> outage;

    void start() {
        report.channel = channel;
        if (!cursor && !disconnected_at) {
            // Never processed anything here and no outage in this run: the history is from before the bot; let
            // live lines flow.
            context->connector().fetch_history({channel, std::nullopt, 0}, [self = shared_from_this()](auto) {
                self->context->finish(self->report);
            });
            return;
        }
        context->connector().fetch_history({channel, std::nullopt, settings.page_size},
                                           [self = shared_from_this()](Result<HistoryPage> page) {
                                               self->on_newest(std::move(page));
                                           });
    }

    void on_newest(Result<HistoryPage> result) {
        if (!result) return gap_from_error(result.error());
        HistoryPage& page = *result;
        report.fetched += page.messages.size();
        auto& messages = page.messages;
        std::size_t from = 0;
        bool found = false;
        if (cursor) {
            for (std::size_t i = 0; i < messages.size(); ++i) {
                if (messages[i].id == cursor->message_id) {
                    from = i + 1;
                    found = true;
                }
            }
        }
        const bool full = messages.size() >= settings.page_size;
        if (!found && cursor && full && !page.complete) {
            // The server pages (CHATHISTORY): ask for what follows the cursor instead.
            return fetch_after(cursor->message_id);
        }
        if (!found) {
            // Older than the cursor (or than the outage, without one) was handled before or predates the bot.
            const std::int64_t since = cursor ? cursor->timestamp_ms : *disconnected_at;
            while (from < messages.size() && messages[from].timestamp_ms < since - settings.skew_ms) ++from;
            if (cursor && !messages.empty() && messages.front().timestamp_ms > cursor->timestamp_ms + settings.skew_ms) {
                report.gap = true;
                report.gap_reason = "the server's history of " + channel + " starts at " +
                                    format_utc(messages.front().timestamp_ms) +
                                    ", after the last processed message (" + format_utc(cursor->timestamp_ms) +
                                    "): what was said in between may be lost";
            }
        }
        report.duplicates += from;
        for (std::size_t i = from; i < messages.size(); ++i) feed(std::move(messages[i]));
        if (!page.complete) {
            // The newest page held the cursor but the connector still holds live lines for us: let them go.
            context->connector().fetch_history({channel, std::nullopt, 0}, [self = shared_from_this()](auto) {
                self->context->finish(self->report);
            });
            return;
        }
        context->finish(report);
    }

    void fetch_after(const std::string& after) {
        ++pages;
        context->connector().fetch_history({channel, after, settings.page_size},
                                           [self = shared_from_this()](Result<HistoryPage> page) {
                                               self->on_after(std::move(page));
                                           });
    }

    void on_after(Result<HistoryPage> result) {
        if (!result) return gap_from_error(result.error());
        HistoryPage& page = *result;
        report.fetched += page.messages.size();
        std::string last;
        for (Message& message : page.messages) {
            last = message.id;
            feed(std::move(message));
        }
        if (page.complete || last.empty()) return context->finish(report);
        if (pages >= settings.max_pages) {
            report.gap = true;
            report.gap_reason = "stopped after " + std::to_string(pages) + " pages of history (max_pages); newer "
                                "messages of " + channel + " before the rejoin are not recovered";
            context->connector().fetch_history({channel, std::nullopt, 0}, [self = shared_from_this()](auto) {
                self->context->finish(self->report);
            });
            return;
        }
        fetch_after(last);
    }

    void feed(Message message) {
        message.recovered = true;
        context->feed(std::move(message));
    }

    void gap_from_error(const Error& error) {
        report.gap = true;
        if (error.retryable && outage) {
            // The connection dropped again before the history came: the next rejoin recovers from the same point.
            std::lock_guard lock(outage->mutex);
            const std::int64_t since = disconnected_at ? *disconnected_at : rejoined_at;
            if (!outage->since || *outage->since > since) outage->since = since;
            report.gap_reason = "recovery interrupted (" + error.code + ": " + error.message +
                                "); it runs again after the next rejoin";
            context->finish(report);
            return;
        }
        const std::string from = disconnected_at ? format_utc(*disconnected_at)
                                                 : cursor ? "the last processed message (" +
                                                                format_utc(cursor->timestamp_ms) + ")"
                                                          : std::string("the start");
        report.gap_reason = "no history from the server (" + error.code + ": " + error.message +
                            "); messages in " + channel + " from " + from + " to the rejoin at " +
                            format_utc(rejoined_at) + " are lost";
        context->finish(report);
    }
};

}  // namespace

std::string format_utc(std::int64_t ms) {
    const std::time_t seconds = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&seconds, &tm);
    char buffer[96];
    std::snprintf(buffer, sizeof buffer, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
    return buffer;
}

IrcReplayPolicy::IrcReplayPolicy(ReplaySettings settings, std::function<std::int64_t()> clock)
    : settings_(settings), clock_(clock ? std::move(clock) : std::function<std::int64_t()>(system_now_ms)) {
    if (settings_.page_size == 0) settings_.page_size = 1;
}

void IrcReplayPolicy::on_event(const ConnectionEvent& event, RecoveryContext& context) {
    std::optional<std::int64_t> disconnected_at;
    {
        std::lock_guard lock(outage_->mutex);
        if (event.type == ConnectionEvent::Type::disconnected) {
            if (!outage_->since) outage_->since = clock_();
            return;
        }
        if (event.type != ConnectionEvent::Type::connected) return;
        disconnected_at = outage_->since;
        outage_->since.reset();
    }
    const std::int64_t rejoined_at = clock_();
    for (const std::string& channel : context.channels()) recover(context, channel, disconnected_at, rejoined_at);
}

void IrcReplayPolicy::recover(RecoveryContext& context, const std::string& channel,
                              std::optional<std::int64_t> disconnected_at, std::int64_t rejoined_at) {
    auto run = std::make_shared<ChannelRun>();
    run->context = &context;
    run->settings = settings_;
    run->channel = channel;
    run->disconnected_at = disconnected_at;
    run->rejoined_at = rejoined_at;
    run->outage = outage_;
    try {
        run->cursor = context.cursor(channel);
    } catch (const std::exception& e) {
        RecoveryReport report;
        report.channel = channel;
        report.gap = true;
        report.gap_reason = std::string("cannot read the channel's cursor: ") + e.what();
        context.finish(report);
        context.connector().fetch_history({channel, std::nullopt, 0}, [](auto) {});
        return;
    }
    run->start();
}

}  // namespace switchboard::irc_replay
