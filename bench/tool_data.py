"""Write tunelab's function-calling data set (issue 29) in OpenAI's chat fine-tuning format.

    python bench/tool_data.py            # writes the three files below
    python bench/tool_data.py --check    # exits 1 unless the files there equal a fresh generation

Seeded, standard library only, no network. Every row is
{"messages": [...], "tools": [...], "parallel_tool_calls": false} with the same short system message and
the same four tools: get_weather(city, unit?), convert_currency(amount, from_currency, to_currency),
set_timer(minutes, label?) and find_flight(origin, destination, date).

- examples/data/tools_train.jsonl (400 rows): 340 requests answered by one call whose arguments hold
  exactly what the request says (an optional argument only when the request names it); 40 of them go on
  with the tool's result and a prose answer that uses it. 60 requests need no tool (small talk, questions
  outside the functions) and get a prose answer.
- tools_validation.jsonl (60): drawn like train (its phrasing and vocabulary), no user message repeated.
- tools_test.jsonl (100): 85 calls, 15 prose answers. Validation and test rows end at the call or the
  prose answer: the thing scored.

How test differs from train: test requests come from their own templates and no-tool questions, with
other sentence shapes and words (no run of three words from the fixed text of a train template or a
train no-tool request occurs in a test request). Half of the cities (12 of 24) and timer labels (10 of
20) and a third of the currencies (3 of 9) that test draws from never occur in train or validation
(TEST_ONLY). Test writes dates "14 March 2026" where train writes "March 14, 2026" (ISO in both), and
units "degrees Celsius" where train also says "°C". Every row, and both properties, are checked each
time the files are written or checked.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import string
import sys
from pathlib import Path
from typing import Any

SEED = 29
OUT = Path(__file__).resolve().parents[1] / "examples" / "data"
SIZES = {"train": 400, "validation": 60, "test": 100}
NO_TOOL_SHARE = 0.15
FOLLOW_UPS = {"train": 40, "validation": 0, "test": 0}  # rows that go on with the tool's result
FUNCTIONS = ("get_weather", "convert_currency", "set_timer", "find_flight")

SYSTEM = (
    "You are a helpful assistant with access to functions. Call a function when one fits the "
    "request; otherwise answer in plain text."
)


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


CODE = {"pattern": "^[A-Z]{3}$"}
TOOLS = [
    _function(
        "get_weather",
        "Get the current weather in a city.",
        {
            "city": _string("City name, e.g. Paris"),
            "unit": _string(
                "Temperature unit, only when the user asks for one", enum=["celsius", "fahrenheit"]
            ),
        },
        ["city"],
    ),
    _function(
        "convert_currency",
        "Convert an amount of money from one currency to another at today's rate.",
        {
            "amount": {"type": "number", "description": "Amount of money to convert"},
            "from_currency": _string("ISO 4217 code of the currency to convert from, e.g. USD", **CODE),
            "to_currency": _string("ISO 4217 code of the currency to convert to, e.g. EUR", **CODE),
        },
        ["amount", "from_currency", "to_currency"],
    ),
    _function(
        "set_timer",
        "Start a countdown timer.",
        {
            "minutes": {"type": "integer", "minimum": 1, "description": "Length of the timer in minutes"},
            "label": _string("Short name for the timer, only when the user gives one"),
        },
        ["minutes"],
    ),
    _function(
        "find_flight",
        "Search for flights between two cities on a date.",
        {
            "origin": _string("Departure city"),
            "destination": _string("Arrival city"),
            "date": _string("Departure date, YYYY-MM-DD", pattern="^[0-9]{4}-[0-9]{2}-[0-9]{2}$"),
        },
        ["origin", "destination", "date"],
    ),
]


def lines(block: str) -> list[str]:
    return [line.strip() for line in block.strip().splitlines()]


def pairs(block: str) -> list[tuple[str, str]]:
    """`left | right` lines, as (left, right)."""
    split = [line.split(" | ") for line in lines(block)]
    return [(left, right) for left, right in split]


# Argument vocabularies: "train" values appear only in train and validation, "test" values only in test.
CITIES = {
    "train": "Lisbon, Chicago, Nairobi, Osaka, Vancouver, Krakow, Seville, Denver, Manila, Dublin, "
    "Marseille, Helsinki",
    "both": "Paris, Tokyo, New York, Berlin, Sydney, Toronto, Madrid, Cairo, Seoul, Mumbai, Rome, "
    "Mexico City",
    "test": "Reykjavik, Valparaiso, Tbilisi, Porto, Ottawa, Hanoi, Edinburgh, Montevideo, Zagreb, Perth, "
    "Kyoto, Casablanca",
}
LABELS = {
    "train": "pasta, laundry, tea, pizza, stretch break, nap, oven, rice, workout, meeting",
    "both": "eggs, homework, meditation, coffee, cookies, study session, bath, phone call, yoga, chores",
    "test": "bread dough, parking meter, face mask, plant watering, podcast, soup, piano practice, brownies, "
    "screen break, dog walk",
}
CURRENCIES = {"train": "AUD, INR, MXN", "both": "USD, EUR, GBP, JPY, CHF, CAD", "test": "SEK, NZD, ZAR"}
# Names a request may use instead of the code; each names one code, so the argument follows from it.
CURRENCY_NAMES = dict(
    pairs("""
    USD | US dollars
    EUR | euros
    GBP | British pounds
    JPY | Japanese yen
    CHF | Swiss francs
    CAD | Canadian dollars
    AUD | Australian dollars
    INR | Indian rupees
    MXN | Mexican pesos
    """)
)
UNIT_WORDS = {
    "train": {"celsius": ["Celsius", "celsius", "°C"], "fahrenheit": ["Fahrenheit", "fahrenheit", "°F"]},
    "test": {"celsius": ["degrees Celsius", "Celsius"], "fahrenheit": ["degrees Fahrenheit", "Fahrenheit"]},
}
AMOUNTS = [20, 35, 50, 75, 100, 120, 250, 300, 500, 800, 1200, 2000, 12.5, 49.99, 7.25, 18.4, 99.95, 64]
MINUTES = [2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 45, 50, 60, 75, 90]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def vocabulary(vocab: dict[str, str]) -> dict[str, list[str]]:
    return {part: text.split(", ") for part, text in vocab.items()}


CITY, LABEL, CURRENCY = vocabulary(CITIES), vocabulary(LABELS), vocabulary(CURRENCIES)
TEST_ONLY = [*CITY["test"], *LABEL["test"], *CURRENCY["test"]]

# Request templates, `kind | template`, by phrasing ("train" phrases train and validation). {minutes} is a
# phrase ("15 minutes", "half an hour"), {n} the bare number.
TEMPLATE_LINES = {
    "train": """
    weather | What's the weather like in {city}?
    weather | weather in {city} today
    weather | Can you check the weather for {city}?
    weather | How hot is it in {city} right now?
    weather | Tell me the current weather in {city}.
    weather | Is it raining in {city}?
    weather | I'm heading to {city} later, what's the weather there?
    weather_unit | What's the temperature in {city} in {unit}?
    weather_unit | Weather for {city}, in {unit} please.
    weather_unit | Give me the weather in {city} using {unit}.
    weather_unit | How warm is {city} today? Answer in {unit}.
    weather_unit | Check {city}'s weather in {unit}.
    currency | Convert {amount} {src} to {dst}.
    currency | How much is {amount} {src} in {dst}?
    currency | What's {amount} {src} worth in {dst}?
    currency | I have {amount} {src}, how many {dst} is that?
    currency | {amount} {src} to {dst} please
    currency | Can you change {amount} {src} into {dst}?
    timer | Set a timer for {minutes}.
    timer | Start a {n}-minute timer.
    timer | Timer for {minutes} please.
    timer | Can you time {minutes} for me?
    timer | Remind me in {minutes}.
    timer_label | Set a timer for {minutes} for the {label}.
    timer_label | Start a {n}-minute timer called {label}.
    timer_label | A {label} timer for {minutes}, thanks.
    timer_label | Put on a timer labelled {label} for {minutes}.
    timer_label | Can you set a {label} timer for {minutes}?
    flight | Find a flight from {origin} to {destination} on {date}.
    flight | Search flights {origin} to {destination}, {date}.
    flight | I need to fly from {origin} to {destination} on {date}.
    flight | Are there any flights from {origin} to {destination} on {date}?
    flight | Book me something from {origin} to {destination} for {date}.
    flight | Flights to {destination} from {origin} on {date}?
    """,
    "test": """
    weather | Do I need an umbrella in {city} today?
    weather | {city} forecast, please.
    weather | Could you look up current conditions in {city}?
    weather | I wonder how the skies look over {city} at the moment.
    weather | Any idea what it's doing outside in {city}?
    weather | Pull up the conditions for {city}.
    weather_unit | Report the temperature for {city} in {unit}.
    weather_unit | I'd like {city}'s current conditions, shown in {unit}.
    weather_unit | Using {unit}, how are things looking outdoors in {city}?
    weather_unit | {city}: what does the thermometer say in {unit}?
    currency | If I exchange {amount} {src}, what do I get back in {dst}?
    currency | Turning {amount} {src} into {dst} gives me what?
    currency | Need the {dst} equivalent of {amount} {src}.
    currency | Quote me {amount} {src} expressed in {dst}.
    currency | My budget is {amount} {src}; what would that come to in {dst}?
    timer | Count down {minutes} for me.
    timer | I need an alarm to go off after {minutes}.
    timer | Ping me once {minutes} have passed.
    timer | Begin a countdown of {minutes}.
    timer | {n} min countdown, go.
    timer_label | Count down {minutes} and name it {label}.
    timer_label | Begin a countdown of {minutes} tagged '{label}'.
    timer_label | For the {label}, I need {minutes} on the clock.
    timer_label | Label a {n}-min countdown as {label}.
    timer_label | Could you run a countdown named {label} lasting {minutes}?
    flight | Which planes leave {origin} for {destination} on {date}?
    flight | Look up air travel options, {origin} → {destination}, departing {date}.
    flight | On {date} I have to get from {origin} to {destination} by air; what's available?
    flight | Show me departures out of {origin} heading to {destination} on {date}.
    flight | Hunting for a seat {origin}-{destination}, date {date}.
    """,
}


def by_kind(block: str) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for kind, template in pairs(block):
        kinds.setdefault(kind, []).append(template)
    return kinds


TEMPLATES = {split: by_kind(block) for split, block in TEMPLATE_LINES.items()}

# Requests no tool serves, `request | answer`. Train's questions also come after each opener ("Hi! ...").
SMALL_TALK = {
    "train": pairs("""
    Hello! | Hello! How can I help you today?
    Good morning! | Good morning! What can I do for you?
    Thanks, that's all I needed. | You're welcome! Have a great day.
    How are you doing today? | I'm doing well, thanks for asking. How can I help?
    You've been very helpful. | Glad I could help! Let me know if there's anything else.
    Goodbye for now. | Goodbye! Come back any time.
    Who are you? | I can check the weather, convert currencies, set timers and find flights.
    What can you do? | Check a city's weather, convert money, set a timer or look for flights.
    """),
    "test": pairs("""
    Hey there, nice to meet you. | Nice to meet you too! What would you like to do?
    Cheers, you've sorted everything out. | Happy to help. Enjoy your day!
    """),
}
QUESTIONS = {
    "train": pairs("""
    What is the capital of Australia? | The capital of Australia is Canberra.
    Who wrote Pride and Prejudice? | Pride and Prejudice was written by Jane Austen.
    How many days are there in a leap year? | A leap year has 366 days.
    What's the difference between Celsius and Fahrenheit? | Two scales: water freezes at 0 °C, or 32 °F.
    Why do we have time zones? | So that clocks in each region roughly match its daylight.
    How do I boil an egg? | Boil it for about 7 minutes for a firm yolk, then cool it in cold water.
    Can you recommend a good book? | Try The Hobbit by J. R. R. Tolkien; it's a short, warm adventure.
    What does ISO 4217 mean? | It is the standard that gives each currency a three-letter code, such as EUR.
    Translate 'thank you' into Spanish. | 'Thank you' in Spanish is 'gracias'.
    What is 12 times 8? | 12 times 8 is 96.
    How far is the Moon from Earth? | On average the Moon is about 384,400 km from Earth.
    Tell me a fun fact. | Octopuses have three hearts and blue blood.
    What's a good name for a cat? | How about Miso, Pepper or Luna?
    How do airplanes stay in the air? | Air flowing over the wings makes lift.
    What language is spoken in Brazil? | The official language of Brazil is Portuguese.
    Can you write a haiku about rain? | Soft rain on the roof / the garden drinks in silence / puddles keep it
    What is the boiling point of water? | At sea level water boils at 100 °C (212 °F).
    How many continents are there? | There are seven continents.
    Give me a tip for sleeping better. | Keep a regular bedtime and avoid screens for an hour before sleep.
    What does a currency exchange rate mean? | The price of one currency in another, e.g. euros per US dollar.
    Who painted the Mona Lisa? | Leonardo da Vinci painted the Mona Lisa.
    Spell 'necessary' for me. | N-E-C-E-S-S-A-R-Y.
    How should I pack for a long flight? | Carry water, a warm layer, headphones and your medicine.
    """),
    "test": pairs("""
    Which planet is the largest in our solar system? | Jupiter is the largest planet in the solar system.
    Who composed the Four Seasons? | Antonio Vivaldi composed The Four Seasons.
    Explain why leaves change colour in autumn. | Trees stop making chlorophyll, so yellow shows.
    Suggest a quick vegetarian dinner. | A vegetable stir-fry with tofu and rice is quick.
    Is a tomato a fruit or a vegetable? | Botanically a fruit, though it is usually cooked as a vegetable.
    How many bones does an adult human have? | An adult human has 206 bones.
    Why do airlines sometimes overbook? | Some passengers don't show up, so airlines sell a few extra seats.
    What causes inflation? | Prices rise when demand outgrows supply or when money becomes easier to get.
    How do thermometers work? | Most measure how a liquid or a metal expands as it gets warmer.
    Recommend a board game for four people. | Ticket to Ride is easy to learn and fun for four.
    What's the square root of 144? | The square root of 144 is 12.
    Write a two-line poem about the sea. | Silver tide comes in, / and sings the harbour into night.
    In which country is the Taj Mahal? | The Taj Mahal is in Agra, India.
    """),
}
OPENERS = ("", "Hi! ", "Quick question: ")


def phrasing(split: str) -> str:
    """Validation is phrased and worded as train is; only test has its own templates and values."""
    return "test" if split == "test" else "train"


def pool(vocab: dict[str, list[str]], split: str) -> list[str]:
    return vocab["both"] + vocab[phrasing(split)]


# Each drawer returns the request kind (a TEMPLATES key), the template's slot values and the arguments.
Drawn = tuple[str, dict[str, Any], dict[str, Any]]


def draw_weather(rng: random.Random, split: str) -> Drawn:
    city = rng.choice(pool(CITY, split))
    if rng.random() < 0.4:
        unit = rng.choice(["celsius", "fahrenheit"])
        word = rng.choice(UNIT_WORDS[phrasing(split)][unit])
        return "weather_unit", {"city": city, "unit": word}, {"city": city, "unit": unit}
    return "weather", {"city": city}, {"city": city}


def currency_mention(rng: random.Random, code: str) -> str:
    return CURRENCY_NAMES[code] if code in CURRENCY_NAMES and rng.random() < 0.5 else code


def draw_currency(rng: random.Random, split: str) -> Drawn:
    amount = rng.choice(AMOUNTS)
    src, dst = rng.sample(pool(CURRENCY, split), 2)
    slots = {"amount": f"{amount:g}", "src": currency_mention(rng, src), "dst": currency_mention(rng, dst)}
    return "currency", slots, {"amount": amount, "from_currency": src, "to_currency": dst}


def minutes_phrase(rng: random.Random, minutes: int) -> str:
    words = {30: "half an hour", 60: "an hour"}
    return words[minutes] if minutes in words and rng.random() < 0.4 else f"{minutes} minutes"


def draw_timer(rng: random.Random, split: str) -> Drawn:
    minutes = rng.choice(MINUTES)
    slots: dict[str, Any] = {"minutes": minutes_phrase(rng, minutes), "n": minutes}
    if rng.random() < 0.5:
        label = rng.choice(pool(LABEL, split))
        return "timer_label", {**slots, "label": label}, {"minutes": minutes, "label": label}
    return "timer", slots, {"minutes": minutes}


def date_phrase(rng: random.Random, day: datetime.date, split: str) -> str:
    if rng.random() < 0.4:
        return day.isoformat()
    month = MONTHS[day.month - 1]
    return f"{day.day} {month} {day.year}" if phrasing(split) == "test" else f"{month} {day.day}, {day.year}"


def draw_flight(rng: random.Random, split: str) -> Drawn:
    origin, destination = rng.sample(pool(CITY, split), 2)
    day = datetime.date(2026, 1, 1) + datetime.timedelta(days=rng.randrange(365))
    slots = {"origin": origin, "destination": destination, "date": date_phrase(rng, day, split)}
    return "flight", slots, {"origin": origin, "destination": destination, "date": day.isoformat()}


DRAWERS = {
    "get_weather": draw_weather,
    "convert_currency": draw_currency,
    "set_timer": draw_timer,
    "find_flight": draw_flight,
}

# What the tools answer in train's follow-up rows, and the prose that uses it.
CONDITIONS = ["sunny", "partly cloudy", "light rain", "overcast", "windy", "clear skies", "snow showers"]
USD_VALUE = {"USD": 1, "EUR": 1.08, "GBP": 1.27, "JPY": 0.0067, "CHF": 1.12, "CAD": 0.73, "AUD": 0.66}
USD_VALUE |= {"INR": 0.012, "MXN": 0.058, "SEK": 0.095, "NZD": 0.61, "ZAR": 0.054}


def weather_result(rng: random.Random, args: dict[str, Any]) -> tuple[dict[str, Any], str]:
    unit = args.get("unit", "celsius")
    celsius = rng.randint(-5, 34)
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    conditions = rng.choice(CONDITIONS)
    result = {"city": args["city"], "temperature": temperature, "unit": unit, "conditions": conditions}
    symbol = "C" if unit == "celsius" else "F"
    return result, f"It's {temperature}°{symbol} in {args['city']} right now, with {conditions}."


def currency_result(rng: random.Random, args: dict[str, Any]) -> tuple[dict[str, Any], str]:
    rate = round(USD_VALUE[args["from_currency"]] / USD_VALUE[args["to_currency"]], 4)
    converted = round(args["amount"] * rate, 2)
    result = {**args, "rate": rate, "converted": converted}
    prose = (
        f"{args['amount']:g} {args['from_currency']} is about {converted:,.2f} {args['to_currency']} "
        f"at today's rate of {rate}."
    )
    return result, prose


def timer_result(rng: random.Random, args: dict[str, Any]) -> tuple[dict[str, Any], str]:
    result = {"timer_id": f"t{rng.randrange(1000, 9999)}", "status": "running", **args}
    if "label" in args:
        return result, f"Done: your {args['label']} timer is set for {args['minutes']} minutes."
    return result, f"Done: a {args['minutes']}-minute timer is running."


def flight_result(rng: random.Random, args: dict[str, Any]) -> tuple[dict[str, Any], str]:
    flights: list[dict[str, Any]] = [
        {
            "flight": f"{rng.choice(['TL', 'NX', 'QA', 'BV'])} {rng.randrange(100, 999)}",
            "departs": f"{rng.randrange(6, 22):02d}:{rng.choice([0, 15, 30, 45]):02d}",
            "price_usd": rng.randrange(90, 900),
        }
        for _ in range(rng.randint(1, 3))
    ]
    flights.sort(key=lambda flight: flight["departs"])
    listed = "; ".join(f"{f['flight']} at {f['departs']} for ${f['price_usd']}" for f in flights)
    count = f"{len(flights)} flight{'s' if len(flights) > 1 else ''}"
    prose = f"I found {count} from {args['origin']} to {args['destination']} on {args['date']}: {listed}."
    return {"flights": flights}, prose


RESULTS = {
    "get_weather": weather_result,
    "convert_currency": currency_result,
    "set_timer": timer_result,
    "find_flight": flight_result,
}


def call_id(rng: random.Random) -> str:
    return "call_" + "".join(rng.choices(string.ascii_letters + string.digits, k=24))


def capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def call_request(rng: random.Random, split: str, function: str, seen: set[str]) -> tuple[str, dict]:
    """A request no split has used yet, and the arguments it asks for."""
    for _ in range(200):
        kind, slots, args = DRAWERS[function](rng, split)
        text = capitalised(rng.choice(TEMPLATES[phrasing(split)][kind]).format(**slots))
        if text not in seen:
            seen.add(text)
            return text, args
    raise RuntimeError(f"no new {function} request for {split} in 200 draws: widen the vocabularies")


def call_row(rng: random.Random, split: str, function: str, seen: set[str], follow_up: bool) -> dict:
    text, args = call_request(rng, split, function, seen)
    call = {
        "id": call_id(rng),
        "type": "function",
        "function": {"name": function, "arguments": json.dumps(args)},
    }
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": text},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    if follow_up:
        result, prose = RESULTS[function](rng, args)
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)})
        messages.append({"role": "assistant", "content": prose})
    return {"messages": messages, "tools": TOOLS, "parallel_tool_calls": False}


def no_tool_pairs(split: str) -> list[tuple[str, str]]:
    """Every no-tool request of a phrasing in a fixed order: small talk, then each question with each
    opener (train's) or bare (test's)."""
    openers = OPENERS if phrasing(split) == "train" else ("",)
    questions = [(o + q, a) for q, a in QUESTIONS[phrasing(split)] for o in openers]
    return SMALL_TALK[phrasing(split)] + questions


def prose_row(request: str, answer: str) -> dict:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": request},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": messages, "tools": TOOLS, "parallel_tool_calls": False}


def build_split(split: str, no_tool: list[tuple[str, str]], seen: set[str]) -> list[dict]:
    """`SIZES[split]` rows: the no-tool share taken from `no_tool` (consumed), the rest calls spread evenly
    over the functions, `FOLLOW_UPS[split]` of them with the tool's result; shuffled."""
    rng = random.Random(f"{SEED}-{split}")
    size = SIZES[split]
    n_prose = round(size * NO_TOOL_SHARE)
    n_calls = size - n_prose
    follow_ups = set(rng.sample(range(n_calls), FOLLOW_UPS[split]))
    rows = [
        call_row(rng, split, FUNCTIONS[i % len(FUNCTIONS)], seen, i in follow_ups) for i in range(n_calls)
    ]
    if len(no_tool) < n_prose:
        raise RuntimeError(f"{split} needs {n_prose} no-tool requests, {len(no_tool)} are left")
    for request, answer in (no_tool.pop(0) for _ in range(n_prose)):
        seen.add(request)
        rows.append(prose_row(request, answer))
    rng.shuffle(rows)
    return rows


def generate() -> dict[str, list[dict]]:
    seen: set[str] = set()
    train_no_tool = no_tool_pairs("train")
    random.Random(f"{SEED}-no-tool").shuffle(train_no_tool)
    splits = {
        "train": build_split("train", train_no_tool, seen),
        "validation": build_split("validation", train_no_tool, seen),
        "test": build_split("test", no_tool_pairs("test"), seen),
    }
    for split, rows in splits.items():
        for number, row in enumerate(rows, 1):
            check_row(row, f"{split} row {number}")
    check_disjoint(splits)
    return splits


def require(condition: bool, message: str) -> None:
    """An assert that `python -O` keeps."""
    if not condition:
        raise AssertionError(message)


SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
TYPES = {"string": (str,), "integer": (int,), "number": (int, float)}


def check_arguments(name: str, arguments: str, where: str) -> dict[str, Any]:
    args = json.loads(arguments)
    schema = SCHEMAS[name]
    require(isinstance(args, dict), f"{where}: arguments are not a JSON object")
    require(set(schema["required"]) <= set(args), f"{where}: a required argument of {name} is missing")
    for key, value in args.items():
        spec = schema["properties"].get(key)
        require(spec is not None, f"{where}: {name} has no argument {key}")
        require(
            isinstance(value, TYPES[spec["type"]]) and not isinstance(value, bool), f"{where}: {key} type"
        )
        require(value in spec.get("enum", [value]), f"{where}: {key}={value!r} is not in its enum")
        require(re.fullmatch(spec.get("pattern", ".*"), str(value)) is not None, f"{where}: {key} pattern")
    return args


def check_grounded(name: str, args: dict[str, Any], request: str, where: str) -> None:
    """Every argument value is in the request or follows from it; an optional one only when asked for."""
    low = request.lower()
    for key in ("city", "label", "origin", "destination"):
        require(key not in args or args[key] in request, f"{where}: {key} {args.get(key)!r} not in request")
    if name == "get_weather":
        asked = [unit for unit in ("celsius", "fahrenheit") if unit in low or f"°{unit[0]}" in low]
        require(asked == ([args["unit"]] if "unit" in args else []), f"{where}: unit does not match request")
    if name == "convert_currency":
        require(f"{args['amount']:g}" in request, f"{where}: amount not in request")
        for key in ("from_currency", "to_currency"):
            code = args[key]
            require(code in request or CURRENCY_NAMES.get(code, code) in request, f"{where}: {key} not asked")
    if name == "set_timer":
        minutes = args["minutes"]
        spoken = {30: "half an hour", 60: "an hour"}.get(minutes, "")
        require(re.search(rf"\b{minutes}\b", request) is not None or spoken in low, f"{where}: minutes")
        named = [label for label in _all(LABEL) if re.search(rf"\b{label}\b", request)]
        require(
            named == ([args["label"]] if "label" in args else []), f"{where}: label does not match request"
        )
    if name == "find_flight":
        day = datetime.date.fromisoformat(args["date"])
        month = MONTHS[day.month - 1]
        written = (args["date"], f"{month} {day.day}, {day.year}", f"{day.day} {month} {day.year}")
        require(any(form in request for form in written), f"{where}: date not in request")


def _all(vocab: dict[str, list[str]]) -> list[str]:
    return [value for values in vocab.values() for value in values]


def check_row(row: dict[str, Any], where: str) -> None:
    row = json.loads(json.dumps(row))  # what a reader of the file gets
    require(set(row) == {"messages", "tools", "parallel_tool_calls"}, f"{where}: keys {sorted(row)}")
    names = {tool["function"]["name"] for tool in row["tools"]}
    messages = row["messages"]
    require(messages[0]["role"] == "system" and messages[1]["role"] == "user", f"{where}: opening roles")
    require(messages[-1]["role"] == "assistant", f"{where}: does not end on the assistant")
    call_ids: set[str] = set()
    for message in messages[2:]:
        if message["role"] == "tool":
            require(message["tool_call_id"] in call_ids, f"{where}: a tool message answers no call")
            json.loads(message["content"])
            continue
        require(message["role"] == "assistant", f"{where}: unexpected role {message['role']}")
        calls = message.get("tool_calls", [])
        require(
            (message["content"] is None) == bool(calls), f"{where}: an assistant turn needs text or calls"
        )
        for call in calls:
            name = call["function"]["name"]
            require(name in names, f"{where}: calls {name}, which the row's tools do not define")
            require(call["id"] not in call_ids and call["type"] == "function", f"{where}: call id or type")
            call_ids.add(call["id"])
            args = check_arguments(name, call["function"]["arguments"], where)
            check_grounded(name, args, messages[1]["content"], where)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9'°→]+", text.lower())


def trigrams(text: str) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)}


def fixed_texts(template: str) -> list[str]:
    """The literal pieces of a template, between its slots."""
    return [literal for literal, *_ in string.Formatter().parse(template) if literal.strip()]


def train_phrasings() -> list[str]:
    """The fixed text of everything train and validation requests are made from."""
    pieces = [piece for kind in TEMPLATES["train"].values() for t in kind for piece in fixed_texts(t)]
    return pieces + [request for request, _ in SMALL_TALK["train"] + QUESTIONS["train"]]


def user_text(row: dict[str, Any]) -> str:
    return row["messages"][1]["content"]


def check_disjoint(splits: dict[str, list[dict]]) -> None:
    """Test phrasing shares no three-word run with train's; test-only values never reach train/validation."""
    train_grams = set().union(*(trigrams(piece) for piece in train_phrasings()))
    earlier = {user_text(row) for s in ("train", "validation") for row in splits[s]}
    for row in splits["test"]:
        require(user_text(row) not in earlier, f"test request {user_text(row)!r} is also in train/validation")
        shared = trigrams(user_text(row)) & train_grams
        require(not shared, f"test request {user_text(row)!r} shares {sorted(shared)} with train phrasing")
    seen = "\n".join(
        json.dumps(row, ensure_ascii=False) for s in ("train", "validation") for row in splits[s]
    )
    leaked = [value for value in TEST_ONLY if re.search(rf"\b{re.escape(value)}\b", seen)]
    require(not leaked, f"test-only values in train or validation: {leaked}")


def serialise(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare the files with a fresh generation")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the three files (examples/data)")
    args = parser.parse_args(argv)
    texts = {split: serialise(rows) for split, rows in generate().items()}
    paths = {split: args.out / f"tools_{split}.jsonl" for split in texts}
    if args.check:
        stale = [str(p) for s, p in paths.items() if not p.is_file() or p.read_text("utf-8") != texts[s]]
        if stale:
            print(f"not what bench/tool_data.py generates: {', '.join(stale)}", file=sys.stderr)
            return 1
        print(f"{len(paths)} files match a fresh generation")
        return 0
    for split, path in paths.items():
        path.write_text(texts[split], encoding="utf-8")
        print(f"{path}: {len(texts[split].splitlines())} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
