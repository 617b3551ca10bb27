"""A generated corpus of in-vehicle voice-assistant dialogues, one topic each."""

import random
from dataclasses import dataclass

# Bump when templates or slot values change: the prepared default models are cached
# under a key that includes this version.
CORPUS_VERSION = "2"
CORPUS_SEED = 0  # the built-in corpus; partition seeds vary, the text does not
DEFAULT_NUM_DOCUMENTS = 20_000


@dataclass(frozen=True)
class Document:
    """One dialogue (``"Driver: ... Assistant: ..."`` on one line) and its topic."""

    text: str
    topic: str


# Slot values. A named slot keeps its value for a whole document, so the assistant
# repeats what the driver asked for and follow-ups refer back: patterns attention
# learns. Numbers are drawn afresh in each exchange.
_SLOTS: dict[str, tuple[str, ...]] = {
    "place": (
        "the airport",
        "the central station",
        "the office",
        "home",
        "the hospital",
        "the stadium",
        "the harbour",
        "the city library",
        "the shopping mall",
        "the university",
        "the old town",
        "the ferry terminal",
        "the ski resort",
        "the lake",
        "the conference centre",
        "the school",
    ),
    "street": (
        "Main Street",
        "Harbour Road",
        "Station Avenue",
        "Park Lane",
        "Mill Road",
        "King Street",
        "Bridge Street",
        "Lake Drive",
        "Forest Way",
        "Church Road",
    ),
    "road": (
        "the A7",
        "the ring road",
        "the B12",
        "the coastal highway",
        "the M4",
        "the bridge",
        "the tunnel",
        "the E45",
    ),
    "city": (
        "Munich",
        "Lyon",
        "Turin",
        "Porto",
        "Gdansk",
        "Ghent",
        "Bergen",
        "Graz",
        "Seville",
        "Leeds",
    ),
    "station": ("Volta Charge", "Green Plug", "Ionity", "City Power", "Fastned"),
    "brand": ("Shell", "Aral", "Total", "Esso", "Q8"),
    "artist": (
        "Nina Simone",
        "the Beatles",
        "Daft Punk",
        "Adele",
        "Miles Davis",
        "Queen",
        "Norah Jones",
        "Radiohead",
        "Bob Marley",
        "Shakira",
    ),
    "genre": ("jazz", "rock", "classical music", "pop", "reggae", "podcasts", "news"),
    "contact": (
        "Anna",
        "Ben",
        "Mum",
        "Dad",
        "Carlos",
        "Dr Weber",
        "the office",
        "Sofia",
        "Tom",
        "Grandma",
        "Lena",
        "Marco",
    ),
    "message": (
        "I am running late",
        "see you at seven",
        "on my way",
        "stuck in traffic",
        "call me back",
        "I will be there in ten minutes",
        "pick up some bread please",
        "the meeting moved to Monday",
    ),
    "warning": (
        "engine",
        "brake",
        "battery",
        "oil pressure",
        "tyre pressure",
        "coolant",
    ),
    "wheel": ("front left", "front right", "rear left", "rear right"),
    "dealer": ("Autohaus Klein", "City Motors", "North Garage", "Service Point West"),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"),
    "sky": ("sunny", "cloudy", "rainy", "foggy", "snowy", "windy"),
    "feature": (
        "Lane assist",
        "Adaptive cruise control",
        "Parking assist",
        "Night vision",
        "Blind spot warning",
    ),
    "mode": ("eco", "comfort", "sport", "snow"),
    "seat": ("driver", "passenger", "rear"),
}
# Facts: a slot whose value follows from another slot's. The teacher learns them from
# the server's data; a device whose data lacks a topic can learn them only from it.
_DERIVED: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "song": (
        "artist",
        {
            "Nina Simone": ("Feeling Good", "Sinnerman"),
            "the Beatles": ("Yesterday", "Let It Be"),
            "Daft Punk": ("Get Lucky", "One More Time"),
            "Adele": ("Hello", "Skyfall"),
            "Miles Davis": ("So What", "Blue in Green"),
            "Queen": ("Bohemian Rhapsody", "Under Pressure"),
            "Norah Jones": ("Come Away With Me", "Sunrise"),
            "Radiohead": ("Creep", "Karma Police"),
            "Bob Marley": ("Redemption Song", "Three Little Birds"),
            "Shakira": ("Hips Don't Lie", "Waka Waka"),
        },
    ),
    "via": (
        "place",
        {
            "the airport": ("the A7",),
            "the central station": ("Station Avenue",),
            "the office": ("King Street",),
            "home": ("Park Lane",),
            "the hospital": ("Church Road",),
            "the stadium": ("the ring road",),
            "the harbour": ("Harbour Road",),
            "the city library": ("Main Street",),
            "the shopping mall": ("the B12",),
            "the university": ("Mill Road",),
            "the old town": ("Bridge Street",),
            "the ferry terminal": ("the M4",),
            "the ski resort": ("the E45",),
            "the lake": ("Lake Drive",),
            "the conference centre": ("the coastal highway",),
            "the school": ("Forest Way",),
        },
    ),
    "advice": (
        "warning",
        {
            "engine": ("please visit a workshop soon",),
            "brake": ("please pull over safely and stop",),
            "battery": ("the battery is weak, avoid short trips",),
            "oil pressure": ("please stop the engine and check the oil",),
            "tyre pressure": ("one tyre is low, check it at the next stop",),
            "coolant": ("the engine is too hot, please stop",),
        },
    ),
}
_NUMBERS: dict[str, tuple[int, int]] = {  # inclusive ranges
    "minutes": (2, 55),
    "km": (1, 300),
    "percent": (5, 95),
    "temp": (16, 28),
    "level": (1, 3),
    "volume": (1, 10),
    "count": (1, 8),
    "exit": (1, 40),
    "hour": (6, 21),
    "days": (3, 60),
    "price": (150, 199),
    "pressure": (17, 29),
}

# topic -> exchanges; an exchange is (driver request, assistant reply).
_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "navigation": (
        (
            "Take me to {place}.",
            "Starting route to {place} via {via}. Arrival in {minutes} minutes.",
        ),
        (
            "Navigate to {place} on {street}.",
            "Route to {place} on {street} is set, {km} km to go.",
        ),
        ("How far is {place}?", "{place} is {km} km away, about {minutes} minutes."),
        ("Add a stop at {place}.", "Stop at {place} added. It adds {minutes} minutes."),
    ),
    "traffic": (
        (
            "How is the traffic on {road}?",
            "Heavy traffic on {road}, expect {minutes} minutes of delay.",
        ),
        (
            "Any accidents on {road}?",
            "There is an accident near exit {exit} on {road}. "
            "A detour saves {minutes} minutes.",
        ),
        ("Is {road} clear?", "Yes, traffic on {road} is light right now."),
    ),
    "charging": (
        (
            "Find a charging station near {place}.",
            "{station} near {place} has {count} free fast chargers, {km} km ahead.",
        ),
        (
            "How much charge do I have?",
            "The battery is at {percent} percent, range {km} km.",
        ),
        (
            "Will I make it to {place}?",
            "Yes, you will reach {place} with {percent} percent battery left.",
        ),
    ),
    "fuel": (
        (
            "How much fuel is left?",
            "The tank is at {percent} percent, about {km} km of range.",
        ),
        (
            "Find the cheapest petrol station.",
            "{brand} on {street} is the cheapest, 1.{price} euro per litre.",
        ),
    ),
    "climate": (
        (
            "Set the temperature to {temp} degrees.",
            "Cabin temperature set to {temp} degrees.",
        ),
        (
            "Turn on the {seat} seat heating.",
            "{seat} seat heating is on, level {level}.",
        ),
        (
            "Defrost the windscreen.",
            "Windscreen defrost is on. The fan is at level {level}.",
        ),
        ("It is too cold in here.", "Raising the temperature to {temp} degrees."),
    ),
    "media": (
        ("Play {song} by {artist}.", "Playing {song} by {artist}."),
        ("Play some {genre}.", "Here is a {genre} station for you."),
        ("Set the volume to {volume}.", "Volume set to {volume}."),
        ("Who sings {song}?", "{song} is by {artist}."),
    ),
    "calls": (
        ("Call {contact}.", "Calling {contact}."),
        ("Who called me?", "You missed a call from {contact} at {hour}:00."),
        ("Call back {contact}.", "Calling {contact} back now."),
    ),
    "messages": (
        (
            "Send a message to {contact}: {message}.",
            "Message to {contact}: {message}. Shall I send it?",
        ),
        ("Read my messages.", "{contact} wrote: {message}."),
        ("Tell {contact} {message}.", "Sent to {contact}: {message}."),
    ),
    "diagnostics": (
        ("Why is the {warning} light on?", "The {warning} warning means {advice}."),
        (
            "Check the tyre pressure.",
            "The {wheel} tyre is low at 2.{pressure} bar. The others are fine.",
        ),
        (
            "Is the car OK?",
            "All systems are fine. The battery is at {percent} percent.",
        ),
    ),
    "maintenance": (
        (
            "When is my next service?",
            "Your next service is due in {days} days or {km}00 km.",
        ),
        ("Book a service at {dealer}.", "Booked at {dealer} on {day} at {hour}:00."),
        ("Do I need new tyres?", "The tread is fine for about {km}00 km more."),
    ),
    "weather": (
        ("What is the weather in {city}?", "In {city} it is {temp} degrees and {sky}."),
        (
            "Will it rain tomorrow?",
            "Tomorrow will be {sky} with a high of {temp} degrees.",
        ),
        ("What is the weather at {place}?", "At {place} it is {sky}, {temp} degrees."),
    ),
    "settings": (
        ("Turn on {feature}.", "{feature} is now on."),
        ("Switch to {mode} mode.", "Drive mode set to {mode}."),
        ("Turn off {feature}.", "{feature} is now off."),
    ),
}
TOPICS: tuple[str, ...] = tuple(_TEMPLATES)


class _Slots(dict[str, str]):
    """Slot values drawn on first use, then kept (numbers: until `next_exchange`)."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self._rng = rng

    def __missing__(self, name: str) -> str:
        if name in _NUMBERS:
            value = str(self._rng.randint(*_NUMBERS[name]))
        elif name in _DERIVED:
            source, table = _DERIVED[name]
            value = self._rng.choice(table[self[source]])
        else:
            value = self._rng.choice(_SLOTS[name])
        self[name] = value
        return value

    def next_exchange(self) -> None:
        for name in _NUMBERS:
            self.pop(name, None)


def _fill(template: str, slots: _Slots) -> str:
    text = template.format_map(slots)
    return text[0].upper() + text[1:]


def _exchange(request: str, reply: str, slots: _Slots) -> str:
    slots.next_exchange()
    return f"Driver: {_fill(request, slots)} Assistant: {_fill(reply, slots)}"


def generate_corpus(
    num_documents: int = DEFAULT_NUM_DOCUMENTS, *, seed: int = CORPUS_SEED
) -> list[Document]:
    """Generate ``num_documents`` dialogues; the same seed always gives the same text.

    Each document holds one to three different exchanges on one topic, drawn from
    `TOPICS` (navigation, traffic, charging, fuel, climate, media, calls, messages,
    diagnostics, maintenance, weather, settings).

    Parameters
    ----------
    num_documents : int
        How many documents to generate.
    seed : int
        Seed of the generator; `CORPUS_SEED` is the built-in corpus.

    Returns
    -------
    list[Document]
        The documents, each with its topic.
    """
    rng = random.Random(seed)
    documents = []
    for _ in range(num_documents):
        topic = rng.choice(TOPICS)
        turns = rng.choices((1, 2, 3), weights=(5, 3, 1))[0]
        exchanges = rng.sample(_TEMPLATES[topic], k=min(turns, len(_TEMPLATES[topic])))
        slots = _Slots(rng)
        text = " ".join(_exchange(*exchange, slots) for exchange in exchanges)
        documents.append(Document(text, topic))
    return documents
