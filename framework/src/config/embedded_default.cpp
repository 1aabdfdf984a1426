// config/switchboard.yaml, compiled in so that `switchboard run` works with no file at all.

#include "config/config.hpp"

namespace switchboard::config {

const std::string& embedded_default_config() {
    // embedded_default_text.inc is generated from embedded_default.cpp.in: the file as one raw string literal.
    static const std::string text =
#include "embedded_default_text.inc"
        ;
    return text;
}

}  // namespace switchboard::config
