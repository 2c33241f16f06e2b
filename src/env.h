// Reading bnorm's environment variables alike: a blank value is unset, words
// (BNORM_TARGET, BNORM_NHWC_ROW_STORES, BNORM_NEXT_GROUP, BNORM_BF16_ROUNDING)
// compare without regard to case or surrounding whitespace, and a value
// quoted back in a warning has its bytes outside printable ASCII masked.
#ifndef BNORM_SRC_ENV_H_
#define BNORM_SRC_ENV_H_

#include <initializer_list>
#include <string>

namespace bnorm {

// ASCII only, whatever the process's locale (setlocale may run before the
// variables are read, and a Turkish locale folds 'i' elsewhere).
bool IsSpace(char ch);
char AsciiUpper(char ch);

// Whether text, without its leading and trailing whitespace, is word
// (ASCII letters compared without regard to case).
bool MatchesWord(const char* text, const char* word);

// The value of the environment variable `name`, or nullptr where it is unset,
// empty or only whitespace.
const char* EnvValue(const char* name);

// text as printable for a warning: bytes outside printable ASCII as '?', at
// most 40 characters, then "...".
std::string Printable(const char* text);

// Which of `words` the environment variable `name` holds (MatchesWord): its
// index, or -1 where the variable is unset. Any other value is reported on
// stderr as "bnorm: NAME=value is not A, B or C; using <fallback>" and gives
// -1 too, so a caller maps indices to its settings and -1 to its default.
int EnvWordIndex(const char* name, std::initializer_list<const char*> words, const char* fallback);

}  // namespace bnorm

#endif  // BNORM_SRC_ENV_H_
