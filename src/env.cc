#include "env.h"

#include <cctype>
#include <cstring>

namespace bnorm {

bool IsSpace(char ch) { return std::isspace(static_cast<unsigned char>(ch)) != 0; }

bool MatchesWord(const char* text, const char* word) {
  while (IsSpace(*text)) ++text;
  const size_t length = std::strlen(word);
  for (size_t i = 0; i < length; ++i, ++text) {
    if (*text == '\0') return false;
    if (std::toupper(static_cast<unsigned char>(*text)) !=
        std::toupper(static_cast<unsigned char>(word[i]))) {
      return false;
    }
  }
  while (IsSpace(*text)) ++text;
  return *text == '\0';
}

bool IsBlank(const char* text) {
  while (IsSpace(*text)) ++text;
  return *text == '\0';
}

std::string Printable(const char* text) {
  std::string out;
  for (; *text != '\0' && out.size() < 40; ++text) {
    out += std::isprint(static_cast<unsigned char>(*text)) ? *text : '?';
  }
  if (*text != '\0') out += "...";
  return out;
}

}  // namespace bnorm
