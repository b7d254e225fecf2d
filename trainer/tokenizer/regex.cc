#include "trainer/tokenizer/regex.h"

#include <pcre2.h>

#include "absl/strings/str_cat.h"
#include "trainer/tokenizer/utf8.h"

namespace prefopt::tokenizer {
namespace {

// Letters and numbers that tokenizers' Oniguruma (Unicode 16) knows and
// Debian 12's PCRE2 10.42 (Unicode 14) does not: the code points its
// \p{L} and \p{N} lack, found by classifying every code point with both.
constexpr char kNewerLetters[] =
    "\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}"
    "\\x{105C0}-\\x{105F3}\\x{10D4A}-\\x{10D65}\\x{10D6F}-\\x{10D85}"
    "\\x{10EC2}-\\x{10EC4}\\x{1123F}-\\x{11240}\\x{11380}-\\x{11389}"
    "\\x{1138B}\\x{1138E}\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}"
    "\\x{113D3}\\x{11BC0}-\\x{11BE0}\\x{11F02}\\x{11F04}-\\x{11F10}"
    "\\x{11F12}-\\x{11F33}\\x{1342F}\\x{13441}-\\x{13446}"
    "\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}\\x{16D40}-\\x{16D6C}"
    "\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}"
    "\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}"
    "\\x{1E5F0}\\x{2B739}\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}";
constexpr char kNewerNumbers[] =
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}"
    "\\x{11F50}-\\x{11F59}\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}"
    "\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}\\x{1E4F0}-\\x{1E4F9}"
    "\\x{1E5F1}-\\x{1E5FA}";

// Rewrites an Oniguruma pattern so that PCRE2 matches the same text:
// `\s`/`\S` become the White_Space property (PCRE2's `\s` also matches
// U+180E), and `\p{L}`/`\p{N}` gain the code points of kNewerLetters and
// kNewerNumbers.
std::string TranslateToPcre2(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[i + 1];
      const std::string_view rest = pattern.substr(i + 1);
      const char* extra = nullptr;
      size_t consumed = 1;
      if (rest.substr(0, 4) == "p{L}" || rest.substr(0, 2) == "pL") {
        extra = kNewerLetters;
        consumed = rest[1] == '{' ? 4 : 2;
      } else if (rest.substr(0, 4) == "p{N}" || rest.substr(0, 2) == "pN") {
        extra = kNewerNumbers;
        consumed = rest[1] == '{' ? 4 : 2;
      }
      if (extra != nullptr) {
        const char* property = extra == kNewerLetters ? "\\p{L}" : "\\p{N}";
        out.append(in_class ? "" : "[");
        out.append(property);
        out.append(extra);
        out.append(in_class ? "" : "]");
      } else if (next == 's') {
        out.append("\\p{White_Space}");
      } else if (next == 'S') {
        out.append("\\P{White_Space}");
      } else {
        out.push_back(c);
        out.push_back(next);
      }
      i += consumed;
      continue;
    }
    out.push_back(c);
    if (!in_class && c == '[') {
      in_class = true;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^')
        out.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']')
        out.push_back(pattern[++i]);
    } else if (in_class && c == '[' && i + 1 < pattern.size() &&
               pattern[i + 1] == ':') {
      // A POSIX class such as [:alpha:] inside a class.
      const size_t close = pattern.find(":]", i + 2);
      if (close != std::string_view::npos) {
        out.append(pattern.substr(i + 1, close + 1 - i));
        i = close + 1;
      }
    } else if (in_class && c == ']') {
      in_class = false;
    }
  }
  return out;
}

// Match data for one match with no captures, reused by every regex on a
// thread.
pcre2_match_data* ThreadMatchData() {
  struct Holder {
    pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
    ~Holder() { pcre2_match_data_free(data); }
  };
  thread_local Holder holder;
  return holder.data;
}

std::string Pcre2ErrorMessage(int code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(code, buffer, sizeof(buffer));
  if (n < 0) return absl::StrCat("PCRE2 error ", code);
  return std::string(reinterpret_cast<const char*>(buffer), n);
}

}  // namespace

void Regex::CodeDeleter::operator()(pcre2_real_code_8* code) const {
  pcre2_code_free(code);
}

absl::StatusOr<Regex> Regex::Compile(std::string_view pattern) {
  const std::string translated = TranslateToPcre2(pattern);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()),
                    translated.size(), PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE,
                    &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "regex \"", absl::string_view(pattern.data(), pattern.size()),
        "\" does not compile (as PCRE2 \"", translated, "\", at offset ",
        error_offset, "): ", Pcre2ErrorMessage(error_code)));
  }
  // Without JIT support the interpreter gives the same matches, slower.
  const bool jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return Regex(std::string(pattern), code, jit);
}

absl::StatusOr<bool> Regex::Search(std::string_view subject, size_t start,
                                   uint32_t options, ByteRange* match) const {
  pcre2_match_data* data = ThreadMatchData();
  const auto* text = reinterpret_cast<PCRE2_SPTR>(subject.data());
  // The JIT takes no anchoring options, and its fixed stack can run out where
  // the interpreter, which backtracks on the heap, copes.
  const bool use_jit = jit_ && options == 0;
  int rc = PCRE2_ERROR_JIT_STACKLIMIT;
  if (use_jit) {
    rc = pcre2_jit_match(code_.get(), text, subject.size(), start, options,
                         data, nullptr);
  }
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    rc =
        pcre2_match(code_.get(), text, subject.size(), start,
                    options | PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, data, nullptr);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  // rc == 0 means a match with more groups than the match data holds; the
  // whole-match range is still set.
  if (rc < 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("regex \"", pattern_, "\" failed on a text of ",
                     subject.size(), " bytes: ", Pcre2ErrorMessage(rc)));
  }
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
  *match = {ovector[0], ovector[1]};
  return true;
}

absl::Status Regex::FindAll(std::string_view subject,
                            std::vector<ByteRange>* matches) const {
  size_t search_from = 0;
  bool have_previous = false;
  size_t previous_end = 0;
  while (search_from <= subject.size()) {
    ByteRange match;
    absl::StatusOr<bool> found = Search(subject, search_from, 0, &match);
    if (!found.ok()) return found.status();
    if (!*found) break;
    if (match.first == match.second && have_previous &&
        previous_end == match.second) {
      search_from += search_from < subject.size()
                         ? Utf8CharLength(subject[search_from])
                         : 1;
      continue;
    }
    matches->push_back(match);
    search_from = match.second;
    previous_end = match.second;
    have_previous = true;
  }
  return absl::OkStatus();
}

bool Regex::FullMatch(std::string_view subject) const {
  ByteRange match;
  absl::StatusOr<bool> found =
      Search(subject, 0, PCRE2_ANCHORED | PCRE2_ENDANCHORED, &match);
  return found.ok() && *found;
}

}  // namespace prefopt::tokenizer
