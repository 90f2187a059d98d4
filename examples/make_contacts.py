"""Write the LLM quickstart's dataset: a sentence mentioning a person, their company and their city,
and the one-line JSON record a downstream system wants from it.

    python examples/make_contacts.py   # rewrites examples/data/contacts_{train,test}.jsonl

A fixed output format is what a small instruction-tuned model gets wrong unaided: it answers in
prose, wraps the JSON in a code fence, adds keys or renames them. Every record here is correct by
construction (the values are the ones put into the sentence), the phrasings vary (24 templates, the
three facts in different orders and roles), 240 for training and 30 for the test; the test rows use people that no training row has.
Seeded: the files are the same on every run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FIRST = """Maria Ahmed Sofia Liam Chen Aisha Lucas Elena Kenji Fatima Noah Ingrid Mateo Priya Oliver
Zara Tomas Mei Samuel Leila Arjun Hannah Diego Yuki Omar Clara Felix Amara Jonas Nadia Victor Ines
Rafael Greta Kwame Lena Hugo Sana Erik Lucia Pavel Rosa Idris Anya Marco Freya Tariq Julia Bruno
Keiko""".split()
LAST = """Lopez Khan Rossi Okafor Wang Novak Silva Jensen Tanaka Haddad Muller Costa Ivanova Brennan Patel
Kowalski Moreau Nakamura Fischer Andersen Garcia Mensah Lindqvist Dubois Yilmaz Santos Weber Ortiz
Kim Bauer Larsen Petrov Romano Schmidt Farah Lee Hughes Ito Nilsson Varga""".split()
COMPANIES = """Northwind Traders|Blue Harbor Labs|Acme Robotics|Greenleaf Foods|Orion Analytics|Redwood
Capital|Silverline Logistics|Brightpath Energy|Cobalt Systems|Maple & Finch|Pioneer Biotech|Quartz
Media|Summit Health|Tidewater Shipping|Vertex Security|Willow Architects|Atlas Insurance|Beacon
Software|Cedar Lane Bakery|Delta Optics|Evergreen Farms|Falcon Aerospace|Granite Legal|Helix
Pharma|Ironbridge Steel|Juniper Networks Group|Kestrel Studios|Lumen Lighting|Meridian Travel|Nimbus
Cloud|Oakridge Partners|Polaris Mining|Riverstone Hotels|Sapphire Textiles|Tandem Bikes|Umbra Design|Vista
Realty|Westgate Motors|Yellowfin Fisheries|Zephyr Wind""".replace("\n", " ").split("|")
CITIES = """Lisbon|Nairobi|Osaka|Toronto|Krakow|Lyon|Austin|Porto|Seoul|Dublin|Cape Town|Melbourne|Bergen|
Valencia|Montreal|Hamburg|Marrakesh|Denver|Gothenburg|Bologna|Accra|Tallinn|Kyoto|Rotterdam|Santiago|
Vienna|Edinburgh|Bangalore|Quito|Helsinki|Auckland|Seville|Brno|Leeds|Zurich|Hanoi|Tbilisi|Cork|
Manila|Ljubljana""".replace("\n", "").split("|")
TEMPLATES = [
    "Hi, I'm {name} and I work at {company} in {city}.",
    "{name} here, from the {city} office of {company}.",
    "Please add {name} ({company}, {city}) to the mailing list.",
    "Met {name} yesterday: they run sales at {company}, based in {city}.",
    "From: {name}\nCompany: {company}\nLocation: {city}",
    "{company} sent {name} over from {city} for the conference.",
    "Contact: {name}, {company} - {city}",
    "Our new supplier is {company} in {city}; the account manager is {name}.",
    "{name} ({city}) has just joined {company}.",
    "Could you call {name} at {company}? They are in {city} this week.",
    "Lunch with {name} from {company}, who flew in from {city}.",
    "Forwarding the CV of {name}, currently at {company} and living in {city}.",
    "Signed, {name} | {company} | {city}",
    "The keynote speaker, {name} of {company}, lives in {city}.",
    "{company} ({city}) has hired {name} as its new CTO.",
    "Invoice query from {name} at {company}, {city} branch.",
    "Note to self: follow up with {name} ({company}) when I'm back in {city}.",
    "In {city} today, {name} from {company} gave a great demo.",
    "New lead - name: {name}; employer: {company}; city: {city}.",
    "{name}, who leads design at {company}, is moving to {city}.",
    "Delivery for {name}, c/o {company}, {city}.",
    "We interviewed {name} last week. Current employer {company}, home town {city}.",
    "Thanks again, {name}! Everyone at {company} enjoyed your visit to {city}.",
    "Registration: {name} / {company} / {city}",
]
INSTRUCTION = "Extract the contact as one line of JSON with the keys name, company and city."
TRAIN_ROWS, TEST_ROWS = 240, 30


def _row(rng: random.Random, name: str) -> dict:
    company, city = rng.choice(COMPANIES), rng.choice(CITIES)
    text = rng.choice(TEMPLATES).format(name=name, company=company, city=city)
    answer = json.dumps({"name": name, "company": company, "city": city}, ensure_ascii=False)
    return {
        "messages": [
            {"role": "user", "content": f"{INSTRUCTION}\n\n{text}"},
            {"role": "assistant", "content": answer},
        ]
    }


def main() -> None:
    rng = random.Random(20261201)
    people = [f"{first} {last}" for first in FIRST for last in LAST]
    rng.shuffle(people)
    test_people, train_people = people[:TEST_ROWS], people[TEST_ROWS : TEST_ROWS + TRAIN_ROWS]
    out = Path(__file__).parent / "data"
    for name, group in (("train", train_people), ("test", test_people)):
        rows = [_row(rng, person) for person in group]
        with (out / f"contacts_{name}.jsonl").open("w", encoding="utf-8") as stream:
            stream.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


if __name__ == "__main__":
    main()
