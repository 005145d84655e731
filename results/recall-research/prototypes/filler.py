import re
SENT = re.compile(r"(?<=[.!?])\s+(?=\S)")
# Words that carry no fact of their own: greetings, thanks, interjections, praise, pronouns and glue.
CHAT = set("""hey hi hello hiya yo wow whoa oh ah aw aww ooh yay yeah yep yes yup no nope ok okay sure totally definitely
absolutely thanks thank thx you so much really very too that that's thats it's its this is was sounds sound looks look seems
great awesome amazing cool nice good wonderful fantastic incredible lovely beautiful sweet fun perfect terrible sad sorry
congrats congratulations glad happy hear to i i'm im me my we us our a an the and but for of what how long time no see
bye goodbye later see ya take care catch you soon night glad of course indeed true right agree couldn't more man bud dude
haha lol omg hmm well just such what's whats how's hows up going doing again""".split())

def is_filler(sentence: str, names: set[str]) -> bool:
    words = re.findall(r"[\w'’]+", sentence.lower().replace("’", "'"))
    return bool(words) and len(words) <= 6 and all(w in CHAT or w in names for w in words)

def compress(text: str, names: set[str]) -> str:
    parts = SENT.split(text)
    kept = [p for p in parts if not is_filler(p, names)]
    return " ".join(kept) if kept else text
