"""Build the general-ability probe that `eval.forgetting` and `whetstone eval --forgetting` use.

The probe must be outside the demo's training domain (Python docstrings) and
license-clean. It has two files:

- text.jsonl: passages for perplexity.
  * Everyday prose written for whetstone (facts about the world, weather,
    cooking, travel...), Apache-2.0 with the project.
  * Sentences generated from the fact tables below.
  * Paragraphs of two license texts that Debian ships in /usr/share/common-licenses
    and that may be copied verbatim: CC0 1.0 (whose legal code Creative
    Commons dedicates to the public domain) and the Apache License 2.0.
- qa.jsonl: short general questions with one-word or one-number answers,
  generated from the fact tables and from arithmetic (facts are not anyone's
  property). A greedy answer counts as correct when it contains the reference as
  whole words.

    python examples/general_probe/build.py      # rewrites text.jsonl and qa.jsonl here

The output is deterministic: the same script gives the same files.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
LICENSES = Path("/usr/share/common-licenses")
SUFFIX = " Answer in a few words."

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"),
    ("Austria", "Vienna"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Hungary", "Budapest"),
    ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("India", "New Delhi"), ("Thailand", "Bangkok"),
    ("South Korea", "Seoul"), ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"), ("Cuba", "Havana"),
    ("Iceland", "Reykjavik"), ("Chile", "Santiago"), ("Turkey", "Ankara"), ("Colombia", "Bogota"),
    ("the United Kingdom", "London"), ("the Czech Republic", "Prague"), ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"), ("Switzerland", "Bern"), ("Brazil", "Brasilia"),
]

OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("fast", "slow"), ("open", "closed"),
    ("wet", "dry"), ("light", "dark"), ("early", "late"), ("happy", "sad"), ("full", "empty"), ("old", "new"),
    ("left", "right"), ("win", "lose"), ("buy", "sell"), ("top", "bottom"), ("loud", "quiet"), ("hard", "soft"),
    ("inside", "outside"), ("north", "south"),
]

FACTS = [
    ("How many legs does a spider have?", "8"), ("How many legs does an insect have?", "6"),
    ("What colour is the sky on a clear day?", "blue"), ("What colour is fresh grass?", "green"),
    ("At what temperature in degrees Celsius does water freeze?", "0"),
    ("At what temperature in degrees Celsius does water boil at sea level?", "100"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("Which planet do people live on?", "Earth"), ("What star does the Earth orbit?", "the Sun"),
    ("How many continents are there?", "7"), ("How many days are in a week?", "7"),
    ("How many months are in a year?", "12"), ("How many hours are in a day?", "24"),
    ("How many minutes are in an hour?", "60"), ("How many sides does a triangle have?", "3"),
    ("How many sides does a square have?", "4"), ("What do bees make?", "honey"),
    ("What is frozen water called?", "ice"), ("Which animal is known as the king of the jungle?", "the lion"),
    ("What is the largest ocean on Earth?", "the Pacific"), ("Which gas do plants take in from the air?",
                                                              "carbon dioxide"),
    ("What is the opposite of yes?", "no"), ("What do cows drink when they are young?", "milk"),
    ("Which season comes after winter?", "spring"), ("Which season comes after summer?", "autumn"),
]

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
NUMBER_WORDS = {11: "eleven", 12: "twelve", 13: "thirteen", 14: "fourteen", 15: "fifteen", 16: "sixteen",
                17: "seventeen", 18: "eighteen", 19: "nineteen", 20: "twenty", 30: "thirty", 40: "forty",
                50: "fifty", 60: "sixty", 70: "seventy", 80: "eighty", 90: "ninety"}

PROSE = [
    ("Bread is one of the oldest prepared foods. Flour, water, salt and yeast are mixed into a dough, which is "
    "left to rise for a few hours. The yeast turns sugar into gas, and the bubbles make the bread light. It is "
    "then baked in a hot oven until the crust is brown."),
    ("Rain forms when water vapour in the air cools and condenses into droplets. The droplets join together in "
    "clouds until they are heavy enough to fall. In cold weather the water freezes on the way down and reaches "
    "the ground as snow or hail."),
    ("A train timetable lists when each train leaves and arrives. Travellers who want to change trains should "
    "leave enough time between connections, because a late train can make them miss the next one. Many "
    "stations show the platform number on large boards."),
    ("Cats sleep for much of the day, often twelve hours or more. They are most active at dawn and at dusk, "
    "when their ancestors hunted small animals. A cat that purrs is usually relaxed, although some cats also "
    "purr when they are unwell."),
    ("The Moon takes about a month to travel around the Earth. As it moves, we see different parts of its "
    "sunlit side, which is why it seems to change shape from a thin crescent to a full disc and back again."),
    ("Walking is a simple form of exercise that needs no equipment. Half an hour of brisk walking on most days "
    "helps the heart and lungs, and it is easy to fit into daily life, for example by walking to the shop "
    "instead of driving."),
    ("A library lends books to its members for a few weeks at a time. Most libraries also offer newspapers, "
    "films and quiet rooms for study, and librarians help visitors find information on almost any subject."),
    ("Tea is made by pouring hot water over dried leaves of the tea plant. Black tea is left to brew for a few "
    "minutes, while green tea needs cooler water and less time. Some people add milk, lemon or sugar."),
    ("Forests cover about a third of the land on Earth. Trees take in carbon dioxide and release oxygen, give "
    "shelter to animals and birds, and hold the soil in place so that heavy rain does not wash it away."),
    ("Bicycles have two wheels, pedals and a chain that turns the rear wheel. Gears make it easier to climb "
    "hills. Riders should wear a helmet and use lights when it is dark."),
    ("A market is a place where people buy and sell goods. Farmers bring fresh fruit, vegetables, eggs and "
    "cheese, and shoppers can often taste before they buy. Prices are sometimes lower at the end of the day."),
    ("Mountains are colder at the top than at the bottom, because the air thins and holds less heat as you "
    "climb. That is why some high peaks keep their snow all year, even near the equator."),
    ("Children usually learn to read between the ages of four and seven. Reading aloud to them, and letting "
    "them choose books they enjoy, helps them learn new words and makes reading a habit."),
    ("A letter needs an address and a stamp before it can be posted. The post office sorts letters by town and "
    "street, and a postman or postwoman delivers them, usually within a few days."),
    ("Honey bees live in large colonies with one queen. Worker bees collect nectar from flowers and turn it into "
    "honey, which the colony eats during the winter. On their way, bees carry pollen from flower to flower."),
    ("The ocean covers most of the surface of the Earth. Its water is salty because rivers carry minerals from "
    "the land into the sea, where they stay when the water evaporates."),
    ("A good night's sleep helps people think clearly and stay healthy. Most adults need seven to nine hours. "
    "Going to bed at the same time each night and avoiding bright screens late in the evening both help."),
    ("Soup is an easy meal to cook. Onions are softened in a little oil, then vegetables, water or stock and "
    "salt are added, and everything simmers until soft. Some soups are blended until smooth."),
    ("Football is played by two teams of eleven players. Each team tries to kick the ball into the other "
    "team's goal, and only the goalkeeper may touch the ball with the hands inside the penalty area."),
    ("Clocks divide the day into hours, minutes and seconds. Old clocks used swinging pendulums or springs, "
    "while most clocks today keep time with a small vibrating quartz crystal."),
]


def qa(question: str, answer: str, task: str) -> dict:
    return {"messages": [{"role": "user", "content": question + SUFFIX}, {"role": "assistant", "content": answer}],
            "task": task}


def questions() -> list[dict]:
    rng = random.Random(0)
    rows = []
    for _ in range(15):
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        rows.append(qa(f"What is {a} plus {b}?", str(a + b), "arithmetic"))
    for _ in range(10):
        a, b = rng.randint(20, 90), rng.randint(2, 19)
        rows.append(qa(f"What is {a} minus {b}?", str(a - b), "arithmetic"))
    for _ in range(15):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        rows.append(qa(f"What is {a} times {b}?", str(a * b), "arithmetic"))
    rows += [qa(f"What is the capital of {country}?", city, "capitals") for country, city in CAPITALS]
    rows += [qa(f"What is the opposite of {word}?", opposite, "opposites") for word, opposite in OPPOSITES]
    rows += [qa(q, a, "facts") for q, a in FACTS]
    rows += [qa(f"Which day of the week comes after {d}?", DAYS[(i + 1) % 7], "calendar") for i, d in enumerate(DAYS)]
    rows += [qa(f"Which month comes after {m}?", MONTHS[(i + 1) % 12], "calendar") for i, m in enumerate(MONTHS)]
    rows += [qa(f"Write the number {word} in digits.", str(n), "numbers") for n, word in NUMBER_WORDS.items()]
    return rows


def license_paragraphs(name: str, min_words: int = 40, max_words: int = 140) -> list[str]:
    """Paragraphs of a license text, reflowed; short ones are joined, long ones cut at a sentence."""
    path = LICENSES / name
    if not path.is_file():
        raise SystemExit(f"{path} is missing; this script reads Debian's common-licenses (package base-files).")
    blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n", path.read_text())]
    out, current = [], ""
    for block in blocks:
        if not block or set(block) <= set("=-"):
            continue
        current = f"{current} {block}".strip()
        if len(current.split()) >= min_words:
            words = current.split()
            out.append(" ".join(words[:max_words]))
            current = ""
    return out


def passages() -> list[dict]:
    rows = [{"text": p, "task": "prose"} for p in PROSE]
    for i in range(0, len(CAPITALS), 5):
        group = CAPITALS[i : i + 5]
        text = " ".join(f"{city} is the capital of {country}." for country, city in group)
        rows.append({"text": text[0].upper() + text[1:], "task": "facts"})
    week = ", ".join(DAYS[:-1]) + " and " + DAYS[-1]
    rows.append({"text": f"The days of the week are {week}. The weekend is Saturday and Sunday.", "task": "facts"})
    rows.append({"text": "The months of the year are " + ", ".join(MONTHS[:-1]) + " and December. January, "
                 "March, May, July, August, October and December have thirty-one days.", "task": "facts"})
    for name in ("CC0-1.0", "Apache-2.0"):
        rows += [{"text": p, "task": "legal"} for p in license_paragraphs(name)]
    return rows


def main() -> None:
    for name, rows in (("text.jsonl", passages()), ("qa.jsonl", questions())):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"wrote {len(rows)} records to {HERE / name}")


if __name__ == "__main__":
    main()
