"""The synthetic world's category tree: 20 first-level categories, 5-8 second-level each, with product
types, brands in three price tiers and attribute phrases. Plain data, so ads, content titles and search
queries all speak the same vocabulary (which is what makes their relevance labels meaningful).
"""

from __future__ import annotations

from dataclasses import dataclass

# Brand tiers: 0 = budget, 1 = mid-range, 2 = premium. Consumption level picks the preferred tier.
TIERS: tuple[str, ...] = ("budget", "mid", "premium")

# Attribute phrases that contradict each other: an ad carries at most one of each group.
EXCLUSIVE_ATTRIBUTES: tuple[frozenset[str], ...] = (
    frozenset({"for ages 3+", "for ages 8+"}),
    frozenset({"hardcover", "paperback", "audiobook"}),
    frozenset({"beginner", "advanced"}),
    frozenset({"self-paced", "live classes"}),
    frozenset({"recycled", "leather"}),
)


@dataclass(frozen=True, slots=True)
class SubCategory:
    """A second-level category: `path` is (first level, second level)."""

    index: int
    top_index: int
    path: tuple[str, str]
    product_types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TopCategory:
    index: int
    name: str
    brands: tuple[tuple[str, int], ...]  # (brand, tier)
    attributes: tuple[str, ...]
    base_ctr: float  # category-level click-through (drives eCPM differences between categories)
    popularity: float  # share of ads and of user interest prior


# name -> (brands by tier [budget, mid, premium], attributes, base CTR %, popularity, {sub: product types})
_RAW: dict[str, tuple[tuple[tuple[str, ...], ...], tuple[str, ...], float, float, dict[str, tuple[str, ...]]]] = {
    "Electronics": (
        (("Voltix", "Zapp"), ("Nexora", "Kestrel Audio"), ("Aurelion", "Sonoria")),
        ("wireless", "noise cancelling", "waterproof", "fast charging", "4K", "bluetooth 5.3", "compact"),
        1.6,
        1.6,
        {
            "Headphones": ("over-ear headphones", "earbuds", "gaming headset"),
            "Smartphones": ("smartphone", "phone case", "screen protector"),
            "Cameras": ("mirrorless camera", "action camera", "camera lens"),
            "TV & Video": ("smart TV", "streaming stick", "projector"),
            "Wearables": ("smartwatch", "fitness tracker", "smart ring"),
            "Speakers": ("bluetooth speaker", "soundbar", "smart speaker"),
        },
    ),
    "Computers": (
        (("Bytecore", "Keyline"), ("Lumatek", "Orbix"), ("Vantage Pro", "Quorra")),
        ("lightweight", "backlit", "ergonomic", "high refresh rate", "USB-C", "mechanical", "portable"),
        1.3,
        1.3,
        {
            "Laptops": ("ultrabook", "gaming laptop", "2-in-1 laptop"),
            "Monitors": ("27-inch monitor", "ultrawide monitor", "portable monitor"),
            "Keyboards & Mice": ("mechanical keyboard", "wireless mouse", "trackpad"),
            "Storage": ("external SSD", "NAS drive", "USB flash drive"),
            "Networking": ("mesh wifi router", "network switch", "wifi extender"),
            "Printers": ("laser printer", "photo printer", "label printer"),
        },
    ),
    "Home & Kitchen": (
        (("CasaBasics", "HomeNest"), ("Ember & Oak", "Kitchara"), ("Maison Lumel", "Ferrant")),
        ("stainless steel", "non-stick", "dishwasher safe", "energy efficient", "cordless", "programmable"),
        1.4,
        1.5,
        {
            "Cookware": ("frying pan", "dutch oven", "knife set"),
            "Small Appliances": ("air fryer", "blender", "espresso machine"),
            "Furniture": ("sofa", "office chair", "bookshelf"),
            "Bedding": ("duvet", "memory foam pillow", "weighted blanket"),
            "Cleaning": ("robot vacuum", "steam mop", "cordless vacuum"),
            "Home Decor": ("table lamp", "wall art", "area rug"),
            "Storage & Organization": ("storage bins", "closet organizer", "shoe rack"),
        },
    ),
    "Fashion": (
        (("Threadly", "UrbanThread"), ("Northmark", "Linen & Lane"), ("Castellane", "Maison Verre")),
        ("organic cotton", "slim fit", "water resistant", "breathable", "recycled", "leather", "oversized"),
        2.0,
        1.5,
        {
            "Women's Clothing": ("summer dress", "blazer", "knit sweater"),
            "Men's Clothing": ("chinos", "oxford shirt", "down jacket"),
            "Shoes": ("sneakers", "ankle boots", "loafers"),
            "Bags": ("backpack", "tote bag", "crossbody bag"),
            "Watches": ("automatic watch", "chronograph", "minimalist watch"),
            "Jewelry": ("silver necklace", "stud earrings", "bracelet"),
        },
    ),
    "Beauty": (
        (("Glowly", "PureDew"), ("Velvetine", "Botanica Lab"), ("Lumière Skin", "Aesira")),
        ("fragrance-free", "vegan", "SPF 50", "hydrating", "long-lasting", "for sensitive skin"),
        2.2,
        1.2,
        {
            "Skincare": ("moisturizer", "vitamin C serum", "sunscreen"),
            "Makeup": ("foundation", "lipstick", "mascara"),
            "Hair Care": ("shampoo", "hair dryer", "hair oil"),
            "Fragrance": ("eau de parfum", "body mist", "cologne"),
            "Men's Grooming": ("beard trimmer", "electric shaver", "aftershave balm"),
        },
    ),
    "Sports & Outdoors": (
        (("TrailMate", "Sprintex"), ("Ridgeline", "Altura"), ("Summit Forge", "Arcterra")),
        ("lightweight", "waterproof", "breathable", "packable", "insulated", "anti-slip", "ultralight"),
        1.5,
        1.3,
        {
            "Camping": ("tent", "sleeping bag", "camping stove"),
            "Hiking": ("hiking boots", "trekking poles", "daypack"),
            "Cycling": ("road bike", "bike helmet", "bike light"),
            "Fitness Equipment": ("adjustable dumbbells", "yoga mat", "rowing machine"),
            "Running": ("running shoes", "running vest", "GPS running watch"),
            "Water Sports": ("paddle board", "wetsuit", "snorkel set"),
        },
    ),
    "Toys & Games": (
        (("Playbloc", "Funzy"), ("Tinker Town", "Brightkin"), ("Heirloom Play", "Orrery Games")),
        ("educational", "STEM", "wooden", "for ages 3+", "for ages 8+", "battery-free", "cooperative"),
        1.8,
        0.9,
        {
            "Building Sets": ("building blocks", "magnetic tiles", "model kit"),
            "Board Games": ("strategy board game", "family card game", "puzzle"),
            "Outdoor Play": ("trampoline", "water blaster", "kids scooter"),
            "Dolls & Figures": ("action figure", "dollhouse", "plush toy"),
            "Video Games": ("game console", "controller", "VR headset"),
        },
    ),
    "Baby": (
        (("TinySteps", "Snugglo"), ("Little Lark", "Nestwell"), ("Bébé Royale", "Cradleworth")),
        ("BPA-free", "organic", "hypoallergenic", "foldable", "machine washable", "newborn"),
        2.4,
        0.8,
        {
            "Strollers": ("jogging stroller", "travel system", "compact stroller"),
            "Car Seats": ("infant car seat", "convertible car seat", "booster seat"),
            "Nursery": ("crib", "baby monitor", "changing table"),
            "Feeding": ("baby bottles", "high chair", "breast pump"),
            "Diapering": ("diapers", "baby wipes", "diaper bag"),
        },
    ),
    "Grocery": (
        (("DailyFare", "ValuPantry"), ("Harvest Row", "Good Grain Co."), ("Artisan Larder", "Terroir Select")),
        ("organic", "gluten-free", "keto", "fair trade", "plant-based", "sugar-free", "family size"),
        1.2,
        1.1,
        {
            "Coffee & Tea": ("whole bean coffee", "green tea", "coffee pods"),
            "Snacks": ("protein bars", "mixed nuts", "dark chocolate"),
            "Pantry Staples": ("olive oil", "pasta", "basmati rice"),
            "Beverages": ("sparkling water", "cold brew", "sports drink"),
            "Meal Kits": ("meal kit subscription", "ready meals", "smoothie kit"),
        },
    ),
    "Health": (
        (("VitaPlus", "CareWay"), ("Nourishe", "Restwell"), ("Elixia Labs", "Meridian Health")),
        ("clinically tested", "drug-free", "vegan", "sugar-free", "travel size", "rechargeable"),
        1.9,
        1.0,
        {
            "Vitamins": ("multivitamin", "vitamin D", "omega-3 capsules"),
            "Sports Nutrition": ("whey protein", "creatine", "electrolyte powder"),
            "Medical Devices": ("blood pressure monitor", "thermometer", "pulse oximeter"),
            "Sleep & Relaxation": ("sleep mask", "white noise machine", "massage gun"),
            "Oral Care": ("electric toothbrush", "water flosser", "whitening strips"),
        },
    ),
    "Automotive": (
        (("AutoPro", "Roadkit"), ("Drivelane", "Torqline"), ("Apex Motorworks", "Veloce Parts")),
        ("universal fit", "heavy duty", "weatherproof", "LED", "12V", "wireless charging", "quick install"),
        1.1,
        0.9,
        {
            "Car Electronics": ("dash cam", "car stereo", "GPS navigator"),
            "Car Care": ("car wax", "pressure washer", "microfiber towels"),
            "Tires & Wheels": ("all-season tires", "winter tires", "alloy wheels"),
            "Interior Accessories": ("seat covers", "phone mount", "floor mats"),
            "EV Charging": ("home EV charger", "charging cable", "portable charger"),
        },
    ),
    "Books": (
        (("Paperleaf Press", "Pocket Reads"), ("Northwind Books", "Inkwell House"), ("Folio Crown", "Atheneum Gold")),
        ("hardcover", "paperback", "illustrated", "bestseller", "signed edition", "audiobook"),
        1.0,
        0.9,
        {
            "Fiction": ("mystery novel", "fantasy novel", "romance novel"),
            "Non-fiction": ("biography", "history book", "popular science book"),
            "Children's Books": ("picture book", "early reader", "bedtime stories"),
            "Business": ("leadership book", "investing guide", "startup handbook"),
            "Cookbooks": ("baking cookbook", "vegetarian cookbook", "quick meals cookbook"),
        },
    ),
    "Pet Supplies": (
        (("PawPal", "Critterco"), ("Wagwell", "Whisker & Co."), ("Regal Paws", "Sable Hound")),
        ("grain-free", "chew resistant", "orthopedic", "washable", "natural", "for large breeds"),
        1.7,
        0.9,
        {
            "Dog Supplies": ("dog food", "dog bed", "dog harness"),
            "Cat Supplies": ("cat litter", "cat tree", "cat food"),
            "Aquarium": ("aquarium kit", "aquarium filter", "fish food"),
            "Pet Health": ("flea treatment", "pet vitamins", "dental chews"),
            "Pet Tech": ("GPS pet tracker", "automatic feeder", "pet camera"),
        },
    ),
    "Garden & Outdoor": (
        (("GreenPatch", "YardEase"), ("Fernhill", "Bloomcraft"), ("Hortensia", "Willowmere")),
        ("solar powered", "cordless", "weather resistant", "self-watering", "rust proof", "foldable"),
        1.3,
        0.8,
        {
            "Gardening Tools": ("pruning shears", "garden hose", "raised garden bed"),
            "Lawn Care": ("robot lawn mower", "leaf blower", "lawn seed"),
            "Outdoor Furniture": ("patio set", "hammock", "outdoor umbrella"),
            "Grills": ("gas grill", "pellet smoker", "charcoal grill"),
            "Outdoor Lighting": ("solar path lights", "string lights", "floodlight"),
        },
    ),
    "Tools & Home Improvement": (
        (("FixRight", "Handyline"), ("Ironwood Tools", "Bolt & Beam"), ("Forgemaster", "Precisio")),
        ("cordless", "brushless", "20V", "heavy duty", "smart", "energy saving", "with case"),
        1.2,
        0.9,
        {
            "Power Tools": ("cordless drill", "circular saw", "impact driver"),
            "Hand Tools": ("socket set", "tool box", "screwdriver set"),
            "Smart Home": ("smart thermostat", "video doorbell", "smart lock"),
            "Lighting": ("LED bulbs", "ceiling fan", "pendant light"),
            "Plumbing": ("shower head", "kitchen faucet", "water filter"),
        },
    ),
    "Travel": (
        (("GoTrip", "FareSaver"), ("Wayfarer", "Compass Lane"), ("Grand Voyage", "Solstice Resorts")),
        ("all-inclusive", "last-minute", "family friendly", "refundable", "beachfront", "weekend"),
        2.6,
        1.0,
        {
            "Flights": ("round-trip flight", "business class ticket", "flight deal"),
            "Hotels": ("city hotel", "beach resort", "boutique hotel"),
            "Luggage": ("carry-on suitcase", "checked luggage", "packing cubes"),
            "Vacation Packages": ("cruise", "ski trip", "guided tour"),
            "Car Rental": ("rental car", "camper van rental", "airport transfer"),
        },
    ),
    "Finance": (
        (("PennyWise", "ClearBank"), ("Northstar Finance", "Ledgerly"), ("Sterling Crest", "Aurum Capital")),
        ("no annual fee", "cashback", "low interest", "commission-free", "instant approval", "high yield"),
        3.0,
        0.9,
        {
            "Credit Cards": ("cashback credit card", "travel credit card", "student credit card"),
            "Loans": ("personal loan", "car loan", "mortgage"),
            "Investing": ("brokerage account", "robo-advisor", "retirement account"),
            "Insurance": ("car insurance", "health insurance", "travel insurance"),
            "Banking": ("savings account", "checking account", "business account"),
        },
    ),
    "Education": (
        (("LearnSpark", "Skillbit"), ("Mindpath", "Academix"), ("Ivy Scholar", "Polymath Institute")),
        ("online", "certificate", "self-paced", "live classes", "beginner", "advanced"),
        2.3,
        0.9,
        {
            "Language Learning": ("Spanish course", "English tutoring", "language app subscription"),
            "Coding": ("Python bootcamp", "web development course", "data science course"),
            "Test Prep": ("SAT prep", "GRE course", "IELTS prep"),
            "Music Lessons": ("guitar lessons", "piano course", "singing lessons"),
            "Professional Skills": ("project management course", "design course", "marketing course"),
        },
    ),
    "Games & Apps": (
        (("Pixel Pop", "Tapfun"), ("Questline", "Neon Arcade"), ("Mythforge", "Starlight Studios")),
        ("free-to-play", "multiplayer", "offline", "no ads", "cross-platform", "family friendly"),
        2.8,
        1.2,
        {
            "Mobile Games": ("puzzle game", "RPG game", "strategy game"),
            "Productivity Apps": ("note-taking app", "to-do app", "calendar app"),
            "Streaming Services": ("music streaming plan", "video streaming plan", "audiobook subscription"),
            "Fitness Apps": ("workout app", "meditation app", "running app"),
            "Photo & Video Apps": ("photo editor", "video editor", "cloud photo storage"),
        },
    ),
    "Real Estate & Services": (
        (("HandyHire", "QuickFix"), ("Homewise", "Keystone Realty"), ("Prestige Estates", "Concierge One")),
        ("licensed", "same-day", "free quote", "24/7", "eco-friendly", "local"),
        2.1,
        0.7,
        {
            "Home Services": ("house cleaning", "plumber", "electrician"),
            "Moving": ("moving company", "storage unit", "packing service"),
            "Real Estate": ("apartment for rent", "home for sale", "property valuation"),
            "Events": ("wedding photographer", "catering", "event venue"),
            "Wellness Services": ("spa day", "personal trainer", "massage therapy"),
        },
    ),
}


def _build() -> tuple[tuple[TopCategory, ...], tuple[SubCategory, ...]]:
    tops: list[TopCategory] = []
    subs: list[SubCategory] = []
    for t_index, (name, (brand_tiers, attributes, ctr_pct, popularity, sub_map)) in enumerate(_RAW.items()):
        brands = tuple((brand, tier) for tier, names in enumerate(brand_tiers) for brand in names)
        tops.append(TopCategory(t_index, name, brands, attributes, ctr_pct / 100.0, popularity))
        for sub_name, product_types in sub_map.items():
            subs.append(SubCategory(len(subs), t_index, (name, sub_name), product_types))
    return tuple(tops), tuple(subs)


def compatible(attribute: str, chosen: list[str]) -> bool:
    """False if `attribute` contradicts one already chosen (see EXCLUSIVE_ATTRIBUTES)."""
    return not any(attribute in group and group.intersection(chosen) for group in EXCLUSIVE_ATTRIBUTES)


TOP_CATEGORIES, SUB_CATEGORIES = _build()
SUBS_BY_TOP: tuple[tuple[int, ...], ...] = tuple(
    tuple(s.index for s in SUB_CATEGORIES if s.top_index == t.index) for t in TOP_CATEGORIES
)
