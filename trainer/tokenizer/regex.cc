#include "trainer/tokenizer/regex.h"

#include <pcre2.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "trainer/tokenizer/json_util.h"
#include "trainer/tokenizer/utf8.h"

namespace prefopt::tokenizer {
namespace {

// A Unicode property as Oniguruma (Unicode 16 in tokenizers 0.23) defines it,
// written for PCRE2 10.42 (Debian 12; Unicode 14): the class items closest to
// it in PCRE2, plus the code points Oniguruma adds to them (mostly characters
// assigned in Unicode 15 and 16, which PCRE2 sees as unassigned) and minus
// those it leaves out (characters whose category changed).
struct UnicodeProperty {
  const char* key;  // case-folded \p{} name, "[:name:]" or "\\w"
  const char* items;
  const char* added;
  const char* removed;
};

constexpr UnicodeProperty kProperties[] = {
#include "trainer/tokenizer/unicode_properties.inc"
};

const UnicodeProperty* FindProperty(std::string_view key) {
  for (const UnicodeProperty& property : kProperties) {
    if (key == property.key) return &property;
  }
  return nullptr;
}

// The \p{} names of kProperties, for error messages.
std::string SupportedPropertyNames() {
  std::string names;
  for (const UnicodeProperty& property : kProperties) {
    const std::string_view key = property.key;
    if (key[0] == '[' || key[0] == '\\' ||
        key.find(' ') != std::string_view::npos) {
      continue;
    }
    absl::StrAppend(&names, names.empty() ? "" : ", ", AbslView(key));
  }
  return names;
}

// Oniguruma compares property names ignoring case, spaces, '-' and '_'.
std::string FoldPropertyName(std::string_view name) {
  std::string folded;
  for (const char c : name) {
    if (c == ' ' || c == '-' || c == '_') continue;
    folded.push_back(absl::ascii_tolower(static_cast<unsigned char>(c)));
  }
  return folded;
}

// Appends `property`, or its complement when `negated`, to `out`: as class
// items inside a bracket class, as a group of its own outside one.
absl::Status AppendProperty(const UnicodeProperty& property, bool negated,
                            bool in_class, std::string_view spelling,
                            std::string* out) {
  const std::string_view removed = property.removed;
  const std::string positive = absl::StrCat(property.items, property.added);
  if (!in_class) {
    if (removed.empty()) {
      absl::StrAppend(out, negated ? "[^" : "[", positive, "]");
    } else if (negated) {
      absl::StrAppend(out, "(?:[", AbslView(removed), "]|[^", positive, "])");
    } else {
      absl::StrAppend(out, "(?:(?![", AbslView(removed), "])[", positive, "])");
    }
    return absl::OkStatus();
  }
  if (!negated) {
    if (!removed.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          AbslView(spelling),
          " inside a bracket class is not supported: PCRE2's Unicode tables "
          "put characters in it that tokenizers' do not, and a bracket class "
          "cannot leave them out (write it outside the brackets)"));
    }
    out->append(positive);
    return absl::OkStatus();
  }
  // A complement inside a class is only expressible as PCRE2's own \P{},
  // which is exact when PCRE2 and tokenizers agree on a single property.
  const std::string_view items = property.items;
  if (property.added[0] != '\0' || !removed.empty() ||
      items.substr(0, 3) != "\\p{" ||
      items.find('\\', 1) != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the complement ", AbslView(spelling),
        " inside a bracket class is not supported: PCRE2's Unicode tables "
        "differ from tokenizers' for it (write it outside the brackets)"));
  }
  absl::StrAppend(out, "\\P", AbslView(items.substr(2)));
  return absl::OkStatus();
}

// Rewrites an Oniguruma pattern so that PCRE2 matches the same text: every
// Unicode property (\p{}, \P{}, \w, \d, \s, \h and POSIX brackets such as
// [:alpha:]) becomes its kProperties form; a property that kProperties lacks
// is an error, since PCRE2 would match it against other tables.
absl::StatusOr<std::string> TranslateToPcre2(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[i + 1];
      if ((next == 'p' || next == 'P') &&
          (i + 2 >= pattern.size() || pattern[i + 2] != '{')) {
        // Oniguruma's Ruby syntax, which tokenizers uses, reads \pL as the
        // letters "pL".
        out.push_back(next);
        ++i;
        continue;
      }
      if (next == 'p' || next == 'P') {
        const size_t close = pattern.find('}', i + 2);
        if (close == std::string_view::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat("unterminated property at offset ", i));
        }
        std::string_view name = pattern.substr(i + 3, close - i - 3);
        const size_t end = close + 1;
        bool negated = next == 'P';
        if (!name.empty() && name[0] == '^') {
          negated = !negated;
          name.remove_prefix(1);
        }
        const std::string_view spelling = pattern.substr(i, end - i);
        const UnicodeProperty* property = FindProperty(FoldPropertyName(name));
        if (property == nullptr) {
          return absl::InvalidArgumentError(
              absl::StrCat("unsupported Unicode property ", AbslView(spelling),
                           " (supported: ", SupportedPropertyNames(), ")"));
        }
        absl::Status status =
            AppendProperty(*property, negated, in_class, spelling, &out);
        if (!status.ok()) return status;
        i = end - 1;
        continue;
      }
      const char lower = absl::ascii_tolower(static_cast<unsigned char>(next));
      if (lower == 'w' || lower == 'd' || lower == 's' || lower == 'h') {
        // Inside brackets Oniguruma reads them as the POSIX brackets (\w
        // then leaves out six Latin-1 digits and fractions it has outside).
        const char* key = nullptr;
        if (lower == 'w') key = in_class ? "[:word:]" : "\\w";
        if (lower == 'd') key = in_class ? "[:digit:]" : "\\d";
        if (lower == 's') key = in_class ? "[:space:]" : "\\s";
        if (lower == 'h') key = in_class ? "[:xdigit:]" : "\\h";
        absl::Status status =
            AppendProperty(*FindProperty(key), next != lower, in_class,
                           pattern.substr(i, 2), &out);
        if (!status.ok()) return status;
      } else {
        out.push_back(c);
        out.push_back(next);
      }
      ++i;
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() &&
        pattern[i + 1] == ':') {
      // A POSIX bracket such as [:alpha:] or [:^alpha:] inside a class.
      const size_t close = pattern.find(":]", i + 2);
      if (close != std::string_view::npos) {
        std::string_view name = pattern.substr(i + 2, close - i - 2);
        const bool negated = !name.empty() && name[0] == '^';
        if (negated) name.remove_prefix(1);
        const std::string_view spelling = pattern.substr(i, close + 2 - i);
        const UnicodeProperty* property =
            FindProperty(absl::StrCat("[:", AbslView(name), ":]"));
        if (property == nullptr) {
          return absl::InvalidArgumentError(absl::StrCat(
              "unsupported POSIX bracket ", AbslView(spelling),
              " (supported: alpha, digit, alnum, upper, lower, space, punct, "
              "xdigit, word, cntrl, blank)"));
        }
        absl::Status status =
            AppendProperty(*property, negated, in_class, spelling, &out);
        if (!status.ok()) return status;
        i = close + 1;
        continue;
      }
    }
    out.push_back(c);
    if (!in_class && c == '[') {
      in_class = true;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^')
        out.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']')
        out.push_back(pattern[++i]);
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
  absl::StatusOr<std::string> translation = TranslateToPcre2(pattern);
  if (!translation.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "regex \"", AbslView(pattern), "\": ", translation.status().message()));
  }
  return CompilePcre2(pattern, *translation);
}

absl::StatusOr<Regex> Regex::RustNumeric() {
  const UnicodeProperty* numeric = FindProperty("rust numeric");
  return CompilePcre2("char::is_numeric",
                      absl::StrCat("[", numeric->items, numeric->added, "]"));
}

absl::StatusOr<Regex> Regex::CompilePcre2(std::string_view pattern,
                                          const std::string& translated) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()),
                    translated.size(), PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE,
                    &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "regex \"", AbslView(pattern), "\" does not compile (as PCRE2 \"",
        translated, "\", at offset ", error_offset,
        "): ", Pcre2ErrorMessage(error_code)));
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
