"""Names -> codes: one folding of spellings, and the lookups built on it.

``normalize_names`` is the key every name lookup in geoguide shares (countries here, the
gazetteer's 400k city names in ``geo.places``), so that "Côte d'Ivoire", "cote
d'ivoire" and "COTE D IVOIRE" meet. ``lookup_country`` accepts names, ISO2/ISO3 codes, GeoNames'
codes for territories the world model files under their sovereign (RE -> FR) and common aliases.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from geoguide.geo.world import (
    GEONAMES_CONTINENTS,
    GEONAMES_ONLY,
    continents,
    countries,
    geonames_countries,
    parts,
)

_ALIASES = {
    "usa": "US", "us": "US", "u s": "US", "u s a": "US", "america": "US", "united states": "US",
    "uk": "GB", "u k": "GB", "britain": "GB", "great britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northern ireland": "GB",
    "czech republic": "CZ", "holland": "NL", "the netherlands": "NL", "russian federation": "RU",
    "south korea": "KR", "korea": "KR", "republic of korea": "KR", "north korea": "KP", "dprk": "KP",
    "viet nam": "VN", "cote d ivoire": "CI", "swaziland": "SZ", "burma": "MM", "timor leste": "TL",
    "macedonia": "MK", "turkiye": "TR", "uae": "AE", "emirates": "AE", "drc": "CD", "dr congo": "CD",
    "congo kinshasa": "CD", "congo brazzaville": "CG", "congo": "CG", "cape verde": "CV",
    "vatican city": "VA", "holy see": "VA", "lao pdr": "LA", "persia": "IR", "prc": "CN",
    "republic of china": "TW", "west bank": "PS", "gaza": "PS", "palestinian territories": "PS",
    "bosnia": "BA", "gambia": "GM", "micronesia": "FM", "falklands": "FK", "sao tome": "ST",
    "kyrgyz republic": "KG", "northern cyprus": "CY", "somaliland": "SO", "spratlys": "XS",
}  # fmt: skip
_CONTINENT_ALIASES = {code.lower(): name for code, name in GEONAMES_CONTINENTS.items()} | {
    "australia": "Oceania",
    "australasia": "Oceania",
}

# Letters NFKD does not decompose into ASCII (str.replace each: a translate table is 10x slower).
_UNDECOMPOSED = (("ø", "o"), ("æ", "ae"), ("œ", "oe"), ("ł", "l"), ("đ", "d"), ("ð", "d"), ("þ", "th"), ("ı", "i"))  # fmt: skip
_NON_ALNUM = re.compile(r"[^0-9a-z\n]+")
_SAINT, _SAINTE = re.compile(r"\bst\b"), re.compile(r"\bste\b")


def normalize_names(texts: list[str]) -> list[str]:
    """Case-, accent- and punctuation-insensitive keys ("Côte d'Ivoire" -> "cote d ivoire", "St. Gallen"
    -> "saint gallen", "Tromsø" -> "tromso"), shared by every name lookup so that spellings meet;
    scripts without a Latin reading fold to ''. Folds all texts as one string: the gazetteer keys
    400k names, and a per-name loop costs seconds."""
    if not texts:
        return []
    folded = "\n".join(t.replace("\n", " ") for t in texts).casefold().replace("&", " and ")
    if not folded.isascii():
        for letter, ascii_ in _UNDECOMPOSED:
            folded = folded.replace(letter, ascii_)
        folded = unicodedata.normalize("NFKD", folded).encode("ascii", "ignore").decode("ascii")
    folded = _SAINTE.sub("sainte", _SAINT.sub("saint", _NON_ALNUM.sub(" ", folded)))
    return [line.strip() for line in folded.split("\n")]


def normalize_name(text: str) -> str:
    return normalize_names([text])[0]


@lru_cache(maxsize=1)
def _name_index() -> dict[str, str]:
    known = countries()
    index: dict[str, str] = {}
    for code, gn in geonames_countries().items():
        target = GEONAMES_ONLY.get(code, code)
        if target in known:
            index.setdefault(normalize_name(gn["name"]), target)
            index.setdefault(normalize_name(gn["iso3"]), target)
            index.setdefault(normalize_name(code), target)
    for p in parts():
        index[normalize_name(p.name)] = p.iso2
    for code, c in known.items():
        index[normalize_name(c.name)] = code
        index[normalize_name(c.iso3)] = code
        index[code.lower()] = code
    index.update(_ALIASES)
    for key in list(index):
        if key.startswith("the "):
            index.setdefault(key[4:], index[key])
        else:
            index.setdefault("the " + key, index[key])
    return index


def lookup_country(text: str) -> str | None:
    """ISO2 for a country name, ISO2/ISO3 code or common alias ('USA', 'Holland'); None if unknown."""
    if not text or not text.strip():
        return None
    return _name_index().get(normalize_name(text))


def countries_in(continent: str) -> list[str]:
    """ISO2 codes on a continent; accepts names case-insensitively and GeoNames codes (EU, AS...)."""
    key = normalize_name(continent)
    name = _CONTINENT_ALIASES.get(key) or next((c for c in continents() if normalize_name(c) == key), None)
    if name is None:
        raise KeyError(f"unknown continent {continent!r}; valid: {', '.join(continents())}")
    return [code for code, c in countries().items() if c.continent == name]

