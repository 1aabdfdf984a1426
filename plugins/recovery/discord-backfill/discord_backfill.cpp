#include "discord_backfill.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <charconv>
#include <exception>
#include <map>
#include <utility>

namespace switchboard::recovery {

std::optional<std::uint64_t> parse_snowflake(std::string_view id) noexcept {
    std::uint64_t value = 0;
    const char* end = id.data() + id.size();
    auto [ptr, ec] = std::from_chars(id.data(), end, value);
    if (id.empty() || ec != std::errc() || ptr != end) return std::nullopt;
    return value;
}

std::int64_t snowflake_time_ms(std::uint64_t id) noexcept {
    return static_cast<std::int64_t>(id >> 22) + kDiscordEpochMs;
}

std::uint64_t snowflake_at(std::int64_t unix_ms) noexcept {
    if (unix_ms <= kDiscordEpochMs) return 0;
    return static_cast<std::uint64_t>(unix_ms - kDiscordEpochMs) << 22;
}

std::string format_duration(std::chrono::milliseconds duration) {
    const std::int64_t ms = duration.count();
    struct Unit {
        std::int64_t ms;
        const char* suffix;
    };
    static constexpr Unit kUnits[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};
    for (const Unit& unit : kUnits) {
        if (ms != 0 && ms % unit.ms == 0) return std::to_string(ms / unit.ms) + unit.suffix;
    }
    return std::to_string(ms) + "ms";
}

namespace {

std::int64_t system_now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

void add_gap(RecoveryReport& report, const std::string& reason) {
    report.gap = true;
    report.gap_reason = report.gap_reason.empty() ? reason : report.gap_reason + "; " + reason;
}

}  // namespace

// One run: the channels of one `connected` (or of a `resumed` after a cut-short run), each paged on its own.
// Everything here runs on the connection's lane (see the header).
struct DiscordBackfill::State : std::enable_shared_from_this<DiscordBackfill::State> {
    struct Channel {
        std::string id;
        std::uint64_t position = 0;  // the last message id fed or skipped: the next page starts after it
        RecoveryReport report;
        std::uint32_t failures = 0;  // consecutive failures of the current page
        bool needs_fetch = false;    // false: settled without fetching (no cursor, unreadable cursor)
        bool done = false;
    };
    struct Run {
        std::uint64_t id = 0;
        std::vector<Channel> channels;
        std::size_t next = 0;  // the next channel to start
        std::size_t active = 0;
        std::size_t done = 0;
        RecoveryContext* context = nullptr;
    };

    State(BackfillOptions options_, Logger& logger_, boost::asio::io_context& io_)
        : options(std::move(options_)), logger(logger_), io(io_) {
        if (!options.now_ms) options.now_ms = &system_now_ms;
    }

    BackfillOptions options;
    Logger& logger;
    boost::asio::io_context& io;
    std::optional<Run> run;
    std::uint64_t last_run_id = 0;
    bool started_once = false;  // a run was started in this process
    // Where each channel of a cut-short run stopped; the next run starts there at the latest.
    std::map<std::string, std::uint64_t> unfinished;

    void on_event(const ConnectionEvent& event, RecoveryContext& context) {
        using Type = ConnectionEvent::Type;
        switch (event.type) {
            case Type::connected:
                interrupt("a new session began before it ended; the new run continues it");
                start(context, context.channels());
                break;
            case Type::resumed: {
                // The first session of this process resumed one saved by an earlier process: the gateway replays
                // what followed the last sequence that process saved, but what it had received and not yet handled
                // when it stopped nothing replays — the cursor tells, so backfill every channel from it.
                if (!started_once) {
                    start(context, context.channels());
                    break;
                }
                // The gateway replays what followed the disconnect; what a cut-short run had not fetched yet from
                // before it, nothing replays.
                if (run || unfinished.empty()) break;
                std::vector<std::string> channels;
                for (const auto& [channel, position] : unfinished) channels.push_back(channel);
                start(context, std::move(channels));
                break;
            }
            case Type::disconnected:
                interrupt("the connection dropped (" + (event.detail.empty() ? "no detail" : event.detail) +
                          "); the next session continues from here");
                break;
            case Type::finished:
                interrupt("the connection finished (" + (event.detail.empty() ? "no detail" : event.detail) + ")");
                break;
        }
    }

    // Ends the run in progress: each channel not done reports a gap once, and remembers where it stopped; its hold
    // stays, so live messages keep waiting until a later run has caught up (releasing them now would move the
    // cursor past what was not fetched). Late page callbacks and timers of the run find another run id (or none)
    // and do nothing.
    void interrupt(const std::string& why) {
        if (!run) return;
        Run ended = std::move(*run);
        run.reset();
        std::size_t cut = 0;
        for (Channel& channel : ended.channels) {
            if (channel.done) continue;
            ++cut;
            unfinished[channel.id] = channel.position;
            add_gap(channel.report, "recovery interrupted: " + why);
            ended.context->finish(channel.report);
        }
        logger.info("backfill run " + std::to_string(ended.id) + " stopped with " + std::to_string(cut) +
                    " channel(s) unfinished: " + why);
    }

    void start(RecoveryContext& context, std::vector<std::string> channel_ids) {
        started_once = true;
        Run fresh;
        fresh.id = ++last_run_id;
        fresh.context = &context;
        const std::int64_t now = options.now_ms();
        const std::uint64_t oldest = snowflake_at(now - options.max_age.count());
        for (std::string& id : channel_ids) {
            Channel channel;
            channel.id = std::move(id);
            channel.report.channel = channel.id;
            plan(context, channel, oldest);
            if (channel.needs_fetch) context.hold(channel.id);  // before any feed: live messages wait for these
            fresh.channels.push_back(std::move(channel));
        }
        run = std::move(fresh);
        std::size_t fetching = 0;
        for (Channel& channel : run->channels) fetching += channel.needs_fetch ? 1 : 0;
        logger.info("backfill run " + std::to_string(run->id) + ": " + std::to_string(fetching) + " of " +
                    std::to_string(run->channels.size()) + " channel(s) to fetch, " +
                    std::to_string(options.concurrency) + " at once");
        // Channels settled without a fetch report first, then up to `concurrency` fetches start.
        for (std::size_t i = 0; i < run->channels.size(); ++i) {
            if (!run->channels[i].needs_fetch) report(i);
        }
        advance();
    }

    // Where @p channel starts: after its cursor, or where a cut-short run stopped if that is older; never before
    // @p oldest (now - max_age).
    void plan(RecoveryContext& context, Channel& channel, std::uint64_t oldest) {
        std::optional<std::uint64_t> start;
        if (auto it = unfinished.find(channel.id); it != unfinished.end()) {
            start = it->second;
            unfinished.erase(it);
        }
        std::optional<Cursor> cursor;
        try {
            cursor = context.cursor(channel.id);
        } catch (const ErrorException& e) {
            add_gap(channel.report, "cannot read the channel's cursor: " + e.error().to_string());
        } catch (const std::exception& e) {
            add_gap(channel.report, std::string("cannot read the channel's cursor: ") + e.what());
        }
        if (cursor) {
            if (auto value = parse_snowflake(cursor->message_id)) {
                start = start ? std::min(*start, *value) : *value;
            } else if (!start) {
                add_gap(channel.report, "the cursor '" + cursor->message_id +
                                            "' is not a Discord message id; nothing was fetched");
            }
        }
        if (!start) return;  // no cursor: nothing was ever processed here, so nothing can have been missed
        channel.needs_fetch = true;
        channel.position = *start;
        if (channel.position < oldest) {
            channel.position = oldest;
            add_gap(channel.report, "history older than max_age (" + format_duration(options.max_age) +
                                        ") skipped: the last processed message is from " +
                                        std::to_string(snowflake_time_ms(*start)) + " ms since the Unix epoch");
        }
    }

    void fill() {
        while (run && run->active < options.concurrency && run->next < run->channels.size()) {
            const std::size_t index = run->next++;
            if (!run->channels[index].needs_fetch) continue;
            ++run->active;
            fetch(run->id, index);
        }
    }

    void fetch(std::uint64_t run_id, std::size_t index) {
        if (!run || run->id != run_id) return;
        Channel& channel = run->channels[index];
        HistoryRequest request;
        request.channel = channel.id;
        request.after_message_id = std::to_string(channel.position);
        request.limit = options.page_size;
        RecoveryContext* context = run->context;
        std::weak_ptr<State> weak = weak_from_this();
        auto done = [weak, context, run_id, index](Result<HistoryPage> page) {
            // On a connector thread: back to the lane before anything else.
            if (weak.expired()) return;
            context->post([weak, run_id, index, page = std::move(page)]() mutable {
                if (auto self = weak.lock()) self->on_page(run_id, index, std::move(page));
            });
        };
        try {
            context->connector().fetch_history(request, std::move(done));
        } catch (const std::exception& e) {
            on_page(run_id, index, fail("fetch_failed", std::string("fetch_history threw: ") + e.what()));
        }
    }

    void on_page(std::uint64_t run_id, std::size_t index, Result<HistoryPage> page) {
        if (!run || run->id != run_id) return;  // a stopped run's late answer
        Channel& channel = run->channels[index];
        if (!page) {
            retry_or_give_up(index, page.error());
            return;
        }
        channel.failures = 0;
        const std::uint64_t before = channel.position;
        take(channel, std::move(page->messages));
        if (page->complete) {
            settle(index);
        } else if (channel.position == before) {
            // Not complete, yet nothing newer to continue after (a connector that leaves out some messages, such
            // as the bot's own, can return such a page): asking again would loop forever.
            add_gap(channel.report, "the connector said more history follows but returned no message newer than " +
                                        std::to_string(before) + "; the rest of the channel's history is not fetched");
            settle(index);
        } else {
            fetch(run_id, index);
        }
    }

    // Feeds the page's new messages in snowflake order; counts the rest as duplicates.
    void take(Channel& channel, std::vector<Message> messages) {
        channel.report.fetched += messages.size();
        std::vector<std::pair<std::uint64_t, Message>> ordered;
        ordered.reserve(messages.size());
        for (Message& message : messages) {
            auto id = parse_snowflake(message.id);
            if (!id) {
                logger.warn("backfill: dropped a message whose id is not a snowflake",
                            LogFields{{}, channel.id, message.id});
                ++channel.report.duplicates;
                continue;
            }
            ordered.emplace_back(*id, std::move(message));
        }
        std::stable_sort(ordered.begin(), ordered.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
        RecoveryContext& context = *run->context;
        for (auto& [id, message] : ordered) {
            if (id <= channel.position) {  // repeated in the page, or not after the position asked for
                ++channel.report.duplicates;
                continue;
            }
            channel.position = id;
            message.channel = channel.id;
            message.recovered = true;
            auto seen = context.is_processed(message);
            if (seen && *seen) {
                ++channel.report.duplicates;
                continue;
            }
            if (!seen) {
                // Feed it all the same: the pipeline's own dedup decides, and retries a failing store.
                logger.warn("backfill: dedup check failed, feeding the message anyway: " + seen.error().to_string(),
                            LogFields{{}, channel.id, message.id});
            }
            context.feed(std::move(message));
        }
    }

    void retry_or_give_up(std::size_t index, const Error& error) {
        Channel& channel = run->channels[index];
        if (!error.retryable) {
            add_gap(channel.report, "fetching history failed: " + error.to_string());
            settle(index);
            return;
        }
        if (channel.failures >= options.retries) {
            add_gap(channel.report, "fetching history failed " + std::to_string(channel.failures + 1) +
                                        " times in a row, the last time: " + error.to_string());
            settle(index);
            return;
        }
        ++channel.failures;
        std::chrono::milliseconds delay(error.retry_after_ms);
        if (delay.count() <= 0) {
            delay = options.retry_delay * (std::int64_t{1} << std::min<std::uint32_t>(channel.failures - 1, 20));
            delay = std::min(delay, options.retry_max_delay);
        }
        logger.debug("backfill: retrying in " + std::to_string(delay.count()) + " ms after " + error.to_string(),
                     LogFields{{}, channel.id, {}});
        const std::uint64_t run_id = run->id;
        RecoveryContext* context = run->context;
        std::weak_ptr<State> weak = weak_from_this();
        auto timer = std::make_shared<boost::asio::steady_timer>(io, delay);
        timer->async_wait([timer, weak, context, run_id, index](const boost::system::error_code&) {
            if (weak.expired()) return;
            context->post([weak, run_id, index] {
                if (auto self = weak.lock()) self->fetch(run_id, index);
            });
        });
    }

    // The channel is done for this run: report it once, and go on with the next channel waiting.
    void settle(std::size_t index) {
        --run->active;
        report(index);
        advance();
    }

    void report(std::size_t index) {
        Channel& channel = run->channels[index];
        channel.done = true;
        ++run->done;
        if (channel.needs_fetch) run->context->release(channel.id);  // live messages held since start() follow
        run->context->finish(channel.report);
    }

    // Ends the run when every channel is done, or starts fetches up to `concurrency`.
    void advance() {
        if (run->done < run->channels.size()) {
            fill();
            return;
        }
        std::size_t fetched = 0;
        std::size_t gaps = 0;
        for (const Channel& c : run->channels) {
            fetched += c.report.fetched;
            gaps += c.report.gap ? 1 : 0;
        }
        logger.info("backfill run " + std::to_string(run->id) + " done: " + std::to_string(fetched) +
                    " message(s) fetched, " + std::to_string(gaps) + " channel(s) with a gap");
        run.reset();
    }
};

const ConfigSchema& DiscordBackfill::config_schema() {
    static const ConfigSchema schema{{
        ConfigKey{"max_age", ValueType::duration, false, "14d",
                  "History older than this is not fetched after a reconnect; the skipped span is reported as a gap."},
        ConfigKey{"page_size", ValueType::integer, false, "100",
                  "Messages per history request, 1 to 100 (Discord's limit)."},
        ConfigKey{"concurrency", ValueType::integer, false, "4",
                  "Channels backfilled at once (requests still pass the connection's rate limits, behind live "
                  "traffic)."},
        ConfigKey{"retries", ValueType::integer, false, "5",
                  "Retries of one page after retryable failures (429, 5xx, a dropped connection) before the channel "
                  "gives up and reports a gap."},
        ConfigKey{"retry_delay", ValueType::duration, false, "1s",
                  "First wait before a retry when the platform names none; doubles each time, up to 30s."},
    }};
    return schema;
}

std::vector<ConfigProblem> DiscordBackfill::check_config(const PluginConfig& config) {
    std::vector<ConfigProblem> problems;
    if (config.get_int("max_age", 1) <= 0) {
        problems.push_back({"max_age", "max_age must be longer than zero, e.g. 14d or 6h"});
    }
    const std::int64_t page_size = config.get_int("page_size", 100);
    if (page_size < 1 || page_size > 100) {
        problems.push_back({"page_size", "page_size must be between 1 and 100 (Discord's limit), not " +
                                             std::to_string(page_size)});
    }
    const std::int64_t concurrency = config.get_int("concurrency", 4);
    if (concurrency < 1 || concurrency > 1000) {
        problems.push_back({"concurrency", "concurrency must be between 1 and 1000, not " +
                                               std::to_string(concurrency)});
    }
    const std::int64_t retries = config.get_int("retries", 5);
    if (retries < 0 || retries > 1000) {
        problems.push_back({"retries", "retries must be between 0 and 1000, not " + std::to_string(retries)});
    }
    if (config.get_int("retry_delay", 1000) < 1) {
        problems.push_back({"retry_delay", "retry_delay must be at least 1ms, e.g. 1s"});
    }
    return problems;
}

BackfillOptions DiscordBackfill::options_from(const PluginConfig& config) {
    BackfillOptions options;
    options.max_age = std::chrono::milliseconds(config.get_int("max_age", options.max_age.count()));
    options.page_size = static_cast<std::uint32_t>(config.get_int("page_size", options.page_size));
    options.concurrency = static_cast<std::uint32_t>(config.get_int("concurrency", options.concurrency));
    options.retries = static_cast<std::uint32_t>(config.get_int("retries", options.retries));
    options.retry_delay = std::chrono::milliseconds(config.get_int("retry_delay", options.retry_delay.count()));
    options.retry_max_delay = std::max(options.retry_max_delay, options.retry_delay);
    return options;
}

namespace {

BackfillOptions checked_options(const PluginConfig& config) {
    if (auto problems = DiscordBackfill::check_config(config); !problems.empty()) {
        throw ErrorException(fail("config_invalid", "recovery." + problems.front().key + ": " +
                                                        problems.front().message));
    }
    return DiscordBackfill::options_from(config);
}

}  // namespace

DiscordBackfill::DiscordBackfill(const PluginContext& context, const PluginConfig& config)
    : DiscordBackfill(checked_options(config), context.logger(), context.io()) {}

DiscordBackfill::DiscordBackfill(BackfillOptions options, Logger& logger, boost::asio::io_context& io)
    : state_(std::make_shared<State>(std::move(options), logger, io)) {}

DiscordBackfill::~DiscordBackfill() = default;

void DiscordBackfill::on_event(const ConnectionEvent& event, RecoveryContext& context) {
    state_->on_event(event, context);
}

}  // namespace switchboard::recovery
