#include "env.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace bnorm {

bool IsSpace(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\v' || ch == '\f' || ch == '\r';
}

char AsciiUpper(char ch) { return ch >= 'a' && ch <= 'z' ? static_cast<char>(ch - 'a' + 'A') : ch; }

bool MatchesWord(const char* text, const char* word) {
  while (IsSpace(*text)) ++text;
  const size_t length = std::strlen(word);
  for (size_t i = 0; i < length; ++i, ++text) {
    if (*text == '\0') return false;
    if (AsciiUpper(*text) != AsciiUpper(word[i])) return false;
  }
  while (IsSpace(*text)) ++text;
  return *text == '\0';
}

const char* EnvValue(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return nullptr;
  const char* p = value;
  while (IsSpace(*p)) ++p;
  return *p == '\0' ? nullptr : value;
}

std::string Printable(const char* text) {
  std::string out;
  for (; *text != '\0' && out.size() < 40; ++text) {
    out += *text >= 0x20 && *text <= 0x7E ? *text : '?';
  }
  if (*text != '\0') out += "...";
  return out;
}

int EnvWordIndex(const char* name, std::initializer_list<const char*> words, const char* fallback) {
  const char* env = EnvValue(name);
  if (env == nullptr) return -1;
  int index = 0;
  std::string list;
  for (const char* word : words) {
    if (MatchesWord(env, word)) return index;
    ++index;
    list += index == 1 ? "" : index == static_cast<int>(words.size()) ? " or " : ", ";
    list += word;
  }
  std::fprintf(stderr, "bnorm: %s=%s is not %s; using %s\n", name, Printable(env).c_str(),
               list.c_str(), fallback);
  return -1;
}

}  // namespace bnorm
