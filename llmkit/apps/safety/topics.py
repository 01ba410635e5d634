"""Topic and policy rules on the user's turn: requests in widely known harm areas, and jailbreak
templates that try to switch the model's rules off.

A harm rule fires on a *request*, not on words that co-occur: a dangerous object with a frame that
asks for it — a verb of making or getting in any form and either word order ("make a pipe bomb",
"explain making one", "walk me through building one", "how is a pipe bomb made?", "how is ricin
extracted?"), an instruction noun ("step-by-step pipe bomb instructions", "a recipe for meth"), or an
intent frame before a harmful act ("how do I", "best way to", "I want to" ... "hurt someone"). A
protective word between frame and object turns it into a harmless question ("how do I *protect* my
site from DDoS attacks", "how do I *stop* people stealing packages"), and an allow-list blanks out
homonyms first ("kill a process", "shoot photos", "glue gun", "bomb cyclone", "the Trojan horse",
"slurs" in sheet music). So "Is chocolate poisonous to dogs?", "What should I do if someone is
knocked unconscious?" and "Can I bring a pocket knife on a plane?" pass. Every pattern also runs on
the obfuscated readings of the turn (`llmkit.apps.safety.variants.views`: ROT13, base64, leetspeak,
reversed, split strings).

What a hit does is the area's refusal tier (`DEFAULT_TIERS`, overridable per area): ``refuse`` with
the reason, ``safe_complete`` (self-harm: a supportive reply with crisis lines instead of the
model's), or ``allow``. Rules are a first line, written on the red-team dev split and hand-written
look-alikes (tests/apps/safety); a learned classifier is the planned second line, slotting in as
another guard.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from .guard import TIERS, Decision, Messages, text_of, tier_decision
from .variants import views

_S = r"[^.?!\n]"  # one character within a sentence
_W = _S + r"{0,60}?"  # a short stretch within one sentence
_VICTIMS = (r"(?:someone|somebody|a person|people|him|her|them|a (?:grown )?(?:man|woman|kid|child|girl|boy|stranger)|"
            r"my (?:wife|husband|ex|boss|teacher|neighbou?r|dad|mom|mum|father|mother|brother|sister|classmate|"
            r"coworker|colleague|girlfriend|boyfriend|partner|roommate|landlord))(?!['\u2019]|s\b)")
_WHOSE = r"(?:her|his|their|someone'?s|my (?:wife|husband|ex|girlfriend|boyfriend|partner|neighbou?r|boss)'?s)"
# Verbs of making, in every form a request uses: "make", "making", "made" (passive: "how is ... made").
_MAKE = (r"make|makes|making|made|build|builds|building|built|assembl(?:e|es|ed|ing)|construct(?:s|ed|ing)?|"
         r"manufactur(?:e|es|ed|ing)|synthe[sz]i[sz](?:e|es|ed|ing)|synthesis|produc(?:e|es|ed|ing)|"
         r"creat(?:e|es|ed|ing)|cook(?:s|ed|ing)?|brew(?:s|ed|ing)?|prepar(?:e|es|ed|ing)|mix(?:es|ed|ing)?|"
         r"3d[- ]?print(?:s|ed|ing)?|improvis(?:e|es|ed|ing)|home-?made|diy")
_DONE = (r"made|built|assembled|constructed|manufactured|synthesi[sz]ed|produced|created|cooked|brewed|prepared|"
         r"mixed|3d[- ]?printed|extracted|isolated|purified|refined|grown|weaponi[sz]ed|obtained|written|coded|"
         r"developed|programmed")
_WRITE = (r"writ(?:e|es|ing|ten)|wrote|creat(?:e|es|ed|ing)|build(?:s|ing)?|built|cod(?:e|es|ed|ing)|"
          r"mak(?:e|es|ing)|made|develop(?:s|ed|ing)?|program(?:s|med|ming)?|generat(?:e|es|ed|ing)|give me|"
          r"craft(?:s|ed|ing)?|design(?:s|ed|ing)?|compos(?:e|es|ed|ing)|draft(?:s|ed|ing)?|implement(?:s|ed|ing)?|"
          r"produc(?:e|es|ed|ing)")
# A frame that asks for instructions or states an intent: "how do I", "best way to", "I want to", ...
_INTENT = (r"how (?:do|can|could|would|should|might|shall|will) (?:i|we|you|u|one|someone|somebody|a person)|"
           r"how to|how i can|\w*(?:est)? ways? to|(?:want|wants|wanted|wanna|going|gonna|plan|plans|planning|"
           r"trying|try|need|needs|intend|intending|about|able) to|help me|teach me|tell me how|show me how|"
           r"explain how|let me|so (?:that )?(?:i|we) can|enough to|tips (?:on|for|to)|steps to|"
           r"(?:instructions|guide) (?:to|for|on)|method (?:to|for)")
# Words between a frame and its object that turn a request protective ("how do I stop people stealing ...").
_PROTECT = (r"stop\w*|prevent\w*|protect\w*|avoid\w*|defend\w*|mitigat\w*|detect\w*|spot\w*|identify\w*|"
            r"recogni[sz]\w*|debunk\w*|surviv\w*|report\w*|treat\w*|recover\w*|block\w*|resist\w*|cope|coping|"
            r"deal(?:ing)? with|check(?:ing)?|flag\w*|tell (?:if|whether)|know (?:if|whether)|secur\w*|keep|from|"
            r"without")
_INSTRUCT = (r"instructions?|steps?|recipes?|tutorials?|guides?|blueprints?|schematics?|formulas?|walk-?through|"
             r"directions|how-?to|plans|diagrams?")


def _near(first: str, second: str, gap: int = 60) -> str:
    """`first`, then `second` at most `gap` characters later in the same sentence."""
    return rf"\b(?:{first})\b{_S}{{0,{gap}}}?\b(?:{second})\b"


def _frame(first: str, second: str, gap: int = 60, protect: str = _PROTECT) -> str:
    """`first`, then `second` at most `gap` characters later in the same sentence, with no protective
    word between them ("how do I protect my site from a DDoS" is not a request for one)."""
    return rf"\b(?:{first})\b(?:(?!\b(?:{protect})\b){_S}){{0,{gap}}}?\b(?:{second})\b"


def _intent(verbs: str, objects: str = "", gap: int = 40) -> str:
    """An intent or instruction frame, then one of `verbs` (and, if given, right after it one of `objects`)."""
    tail = rf"\s+(?:{objects})\b" if objects else ""
    return _frame(_INTENT, rf"(?:{verbs})\b{tail}", gap)


def _asks(objects: str, verbs: str = _MAKE, done: str = _DONE, gap: int = 60) -> str:
    """A request to make (or get) one of `objects`, in any word order a question takes: a verb before it
    ("make a pipe bomb", "explain making one", "walk me through building one"), the passive ("how is
    a pipe bomb made?"), an instruction noun ("instructions for a pipe bomb", "step-by-step pipe bomb
    instructions", "pipe bomb recipe")."""
    return "|".join([
        _frame(verbs, objects, gap),
        rf"\b(?:how|steps?|process|procedure|method|way|explain|describe|instructions?)\b{_S}{{0,{gap}}}?"
        rf"\b(?:{objects})\b{_S}{{0,40}}?\b(?:{done})\b",
        rf"\b(?:{_INSTRUCT})\s+(?:for|on|to|of)\s+(?:\w+\s+){{0,3}}?(?:{objects})\b",
        rf"\bstep[- ]?by[- ]?step\b{_S}{{0,40}}?\b(?:{objects})\b",
        rf"\b(?:{objects})[- ](?:making|building|assembly|construction|synthesis|{_INSTRUCT})\b",
    ])


_GUNS = (r"(?:hand|shot|zip ?|ghost |machine |stun )?guns?(?![- ]?(?:safes?|cabinets?|locks?|shows?|laws?|control|"
         r"violence|owners?|ownership|rights?|range|club|shy|dogs?|metal))|firearms?|rifles?|pistols?|ar-?15s?|"
         r"ak-?47s?|silencers?|suppressors?|tasers?|full[- ]auto|auto[- ]?sears?|bump[- ]?stocks?")
_AGENTS = (r"sarin|vx|tabun|soman|nerve agents?|mustard gas|chlorine gas|ricin|abrin|anthrax|botulinum(?: toxin)?|"
           r"novichok|phosgene|hydrogen cyanide|cyanide gas|tetrodotoxin|bioweapons?|chemical weapons?")
_BOMBS = (r"(?:pipe |nail |car |letter |dirty |suicide |pressure[- ]cooker |petrol |fertili[sz]er )?bombs?"
          r"(?![- ]?(?:threats?|cyclones?|shelters?|squads?|disposal|scares?|sniff\w*|dogs?|proof|bays?|"
          r"calorimeters?|jackets?|pops?|drops?|shells?))|explosives|explosive (?:devices?|charges?|materials?|"
          r"compounds?|mixtures?|vests?|belts?)|an explosive(?=\s*[.?!,]|\s+(?:at|from|with|out|using|that)\b)|"
          r"ieds?|grenades?|detonators?|molotovs?(?: cocktails?)?|napalm|thermite|tatp|semtex|c-?4 explosive")
_DRUGS = (r"meth|methamphetamine|crystal meth|cocaine|crack cocaine|heroin|fentanyl|lsd|mdma|ecstasy|ghb|"
          r"magic mushrooms|psilocybin|dmt|pcp|ketamine")
_MALWARE = (r"ransom[- ]?ware|key[- ]?loggers?|trojans?|root[- ]?kits?|bot[- ]?nets?|spy[- ]?ware|stalker[- ]?ware|"
            r"mal[- ]?ware|remote access trojans?|backdoors?(?!\s+(?:entrances?|gates?|steps?|doors?|frames?|locks?))|"
            r"info[- ]?stealers?|(?:hidden|stealth|covert|silent) "
            r"(?:crypto[- ]?)?miners?|cryptojack\w*|computer viruse?s?|viruse?s? that|self[- ]replicating \w+|"
            r"zero[- ]click exploits?")
_ANIMAL = (r"(?:my|the|a|an|our|his|her|their|this|that|[\w-]+'s)\s+(?:[\w'-]+\s+){0,2}?(?:dogs?|cats?|puppy|"
           r"puppies|kittens?|pets?|horses?|birds?|animals?)")
_THIRD = (r"(?:(?:someone|somebody|a person|another person|other people|people|her|his|their|him|them|a stranger|"
          r"strangers|my (?:ex|wife|husband|girlfriend|boyfriend|partner|boss|neighbou?r|sister|brother|mom|dad|"
          r"mum|roommate|classmate|coworker|colleague|teacher|friend))(?:'?s)?|[\w-]+'s)")

HARM: dict[str, Sequence[str]] = {
    "weapons": [
        _asks(_GUNS, _MAKE + r"|convert\w*|modif(?:y|ies|ied|ying)"),
        _near(r"off|remov\w*|grind\w*|file|filing|eras\w*|scratch\w*|deface\w*", r"serial numbers?")
        + rf"{_S}{{0,60}}?\b(?:guns?|handguns?|firearms?|rifles?|pistols?|weapons?)\b|"
        + _near(r"grind\w*|remov\w*|eras\w*|file|filing|deface\w*", r"(?:\w+ )?(?:gun|handgun|firearm|rifle|pistol)'?s? "
                                                                    r"serial numbers?"),
        r"\buntraceable (?:guns?|firearms?|weapons?)\b",
        _asks(_AGENTS, _MAKE + r"|extract\w*|isolat\w*|purif\w*|refin\w*|concentrat\w*|weaponi[sz]\w*|cultur\w*|"
                               r"culti?vat\w*|aerosoli[sz]\w*|releas\w*|dispers\w*"),
        _near(r"get|obtain|buy|acquire|order|source", _AGENTS, 30),
        _near(r"extract\w*|mak(?:e|ing)|get|obtain|isolat\w*|concentrat\w*|brew\w*",
              r"(?:lethal|fatal|deadly|toxic) (?:doses?|amounts?|quantit(?:y|ies)|toxins?|poisons?)"),
        _intent(r"poison|poisoning|drug|drugging", rf"{_VICTIMS}|(?:a |the |my |his |her |their |[\w-]+'s )?"
                                                   r"(?:food|drink|coffee|tea|wine|meal)"),
        r"\b(?:untraceable|undetectable) poisons?\b|\bpoisons? that (?:doesn'?t|does not|won'?t|will not|can'?t|"
        r"cannot) (?:show|be (?:detected|traced))",
        _near(r"buy|get", r"guns?|firearms?") + _W + r"\bwithout (?:a )?(?:licen[cs]e|background check)",
    ],
    "explosives": [
        _asks(_BOMBS, _MAKE + r"|detonat\w*|wir(?:e|es|ed|ing)|pack(?:s|ed|ing)?|fill(?:s|ed|ing)?"),
        _near(r"fertili[sz]er", r"fuel|diesel") + r"|\banfo\b",
        _near(r"proportions?|ratios?|quantities", r"bomb|explosive|blast"),
        _near(r"bombing", r"proportions|make the same|how to make|recreate"),
        r"\bc[oó]mo (?:hacer|fabricar) (?:una )?bomba\b",
    ],
    "malware": [
        _asks(_MALWARE, _WRITE),
        _near(_WRITE, r"worms?") + _W + r"\b(?:spread\w*|replicat\w*|propagat\w*|smb|usb|network)\b",
        r"\b(?:script|program|code|payload|macro|binary|exe|extension|app)\b" + _W
        + r"\b(?:disabl\w*|switch(?:es|ing)? off|turn(?:s|ing)? off|kill\w*|bypass\w*|evad\w*)\b" + _S + r"{0,20}?"
        r"\b(?:windows defender|defender|antivirus|anti-virus|edr)\b",
        r"\b(?:evade|evading|bypass|bypassing)\b (?:the )?(?:antivirus|anti-virus|edr|defender|av) detection\b|"
        r"\bundetect\w* by (?:antivirus|anti-virus|edr|defender)\b",
        _frame(_WRITE + "|" + _INTENT, r"steal\w*", 80) + _S + r"{0,30}?\b(?:cookies|passwords|credentials|"
                                                               r"sessions?|logins?|card details)\b",
    ],
    "cybercrime": [
        _frame(_WRITE + r"|run|running|do|perform|launch|tool|bot", r"credential[- ]stuffing|sim[- ]swap\w*"),
        r"\bcredential[- ]stuffing (?:script|tool|bot|attack on)\b",
        _frame(_WRITE + r"|" + _INTENT + r"|launch\w*|perform\w*|carry out|run|start|script|tool|use", 
               r"ddos\w*|d?dos attacks?|denial[- ]of[- ]service|syn[- ]flood\w*|syn packets"),
        r"\b(?:with|using|via) (?:a |an )?(?:ddos|syn[- ]flood|botnet)\b",
        r"\b(?:ddos|syn[- ]flood)(?:ing)? (?:a|an|the|someone'?s|his|her|their|[\w-]+'s) ",
        r"\b(?:hack|hacks|hacking|hacked|hackear|piratear|hacken)\b(?: into)?\s+(?!(?:my|our) own\b)"
        r"(?:(?!\b(?:my|our)\b(?!\s+(?:ex|ex-\w+|wife|husband|girlfriend|boyfriend|partner|boss|neighbou?r|"
        r"sister|brother|mom|dad|mum|roommate|classmate|coworker|colleague|teacher|friend|school)))" + _S + r"){0,40}?"
        r"\b(?:accounts?|cuenta|phones?|e-?mails?|inbox|instagram|facebook|snapchat|whatsapp|tiktok|twitter|wi-?fi|"
        r"databases?|servers?|network|laptop|computer|camera|webcam|router|website)\b",
        rf"\b(?:break|breaking|get|getting) into {_THIRD} (?:[\w-]+ ){{0,2}}?(?:accounts?|phones?|e-?mails?|inbox|"
        r"instagram|facebook|snapchat|whatsapp|laptop|computer|camera|webcam)\b",
        r"\b(?:break|breaking|get|getting|unlock\w*) into (?:a|an|this) (?:locked )?(?:phone|laptop|iphone|account)"
        r" (?:i|that i|we) found\b",
        r"\bcrack(?:s|ed|ing)?\s+(?!(?:my|our)\b(?!\s+(?:ex|neighbou?rs?|school|boss|work|office|roommate)))"
        r"(?:\S+\s+){0,3}?(?:licen[cs]e|activation|serial keys?|product keys?|"
        r"passwords?|wpa2?|drm)",
        _near(r"bypass\w*|get around", r"licen[cs]e|activation|paywall|drm"),
        _frame(r"exploit\w*|hack\w*|take over|taking over|shut(?:ting)? down|attack\w*|disrupt\w*|sabotag\w*|"
               r"knock\w* out", r"scada|power plants?|power grid|water treatment|substations?|plcs?"),
        r"\bknock\w*\s+(?!my\b|our\b)(?:\S+\s+){1,6}?offline\b",
        rf"\b(?:{_WRITE}) (?:me )?(?:a |an )?(?:convincing |realistic )?phishing (?:emails?|pages?|sites?|texts?|sms|"
        r"messages?|kit)\b",
        r"\buntil (?:it|the (?:server|site|website|target|host|network)) (?:goes|is|go) offline\b|"
        r"\buntil the (?:server|site|website|target|host|network) (?:goes|is|go) down\b",
    ],
    "fraud": [
        _frame(_MAKE + r"|get|buy|order|print|generate|write|post|pass|forge", r"fake (?:[\w']+ ){0,2}(?:reviews?|"
               r"ids?|identit(?:y|ies)|licen[cs]es?|passports?|diplomas?|degrees?|vaccination|certificates?|invoices?|"
               r"receipts?|doctor'?s notes?|pay ?slips?|bank statements?)"),
        _near(r"reviews?", r"(?:fake|different|made[- ]up) (?:names|accounts|profiles)", gap=100),
        _near(r"counterfeit|forged?|knock[- ]offs?", r"sell|print|pass off") + "|"
        + _near(r"sell|make|print", r"counterfeit|knock[- ]offs?"),
        r"\bsell (?:them|it|these) as (?:genuine|real|authentic)\b",
        _near(r"launder", r"money|cash|proceeds") + r"|\bevade (?:\w+ )?tax(?:es)?\b|\bhide (?:my |our )?income\b",
        r"\b(?:pretend\w*|posing|claiming|masquerading) (?:to be|as) (?:from )?(?:the |a |an |your )?(?:\w+ )?(?:bank|"
        r"parcel|delivery|courier|irs|hmrc|police|tax office|microsoft support|tech support)",
        _near(r"harvest\w*|steal\w*|skim\w*|phish\w*", r"card details|card numbers|bank details|passwords"),
        r"\bsteal (?:someone'?s |a person'?s )?identit|\b(?:commit|do) (?:bank |insurance |tax )?fraud\b",
        _frame(_INTENT + "|" + _WRITE, r"(?:scam|defraud|con)\b (?:people|elderly|old people|someone|my grandm\w*|"
                                       r"seniors|the elderly)"),
        _near(r"rig", r"casino|slot machines?|lottery|elections?|roulette"),
    ],
    "drugs": [
        _asks(_DRUGS, _MAKE + r"|grow\w*|extract\w*|refin\w*"),
        _near(r"sell\w*", r"drugs|weed|mushrooms|pills|meth|cocaine|coke|ecstasy") + _W
        + r"\b(?:without getting caught|campus|school|students|kids)\b",
        _near(r"sell\w*", r"them|it") + _W + r"\bwithout getting caught\b",
        _asks(r"oxycodone|opioids?|codeine|morphine|pseudoephedrine|fentanyl", r"extract\w*|isolat\w*"),
    ],
    "self_harm": [
        r"\b(?:kill|harm) myself\b|\b(?:commit|committing) suicide\b|\bsuicide (?:methods?|notes?|plan)\b",
        _intent(r"hurt|cut|starve|burn|injure|punish", r"myself") + r"|\b(?:urge|feel like|thinking (?:about|of)|"
        r"should i) (?:to )?(?:hurt|cut|cutting|hurting|starv\w*|burn\w*) myself\b",
        r"\bend (?:my life|it all)\b|\bwant(?:ed)? to die\b|\bhow (?:to|do i|can i) overdose\b",
        r"\bhide (?:my |the |these )?(?:cutting|self[- ]harm|cuts)\b|\b(?:cutting|self[- ]harm) scars\b",
        _near(r"how many|how much", r"pills|tablets") + _W + r"\b(?:die|fatal|lethal|kill|dead|wake up)\b",
    ],
    "hate": [
        _near(r"list|give|write|tell|generate|\d+|ten|fifteen|twenty|some|worst", r"slurs?"),
        r"\b(?:racist|sexist|homophobic|transphobic|antisemitic|islamophobic) (?:jokes?|posts?|rants?|slogans?|memes?)\b",
    ],
    "harassment": [
        _frame(_WRITE + r"|post|send", r"(?:mock|humiliat|insult|harass|bully|bullie|ridicul|torment|sham|belittl)\w*"
               rf"\s+(?:{_VICTIMS}|{_THIRD}\s+(?:[\w'-]+\s+){{0,2}}?(?:weight|looks|face|body|appearance|classmate|"
               r"coworker|colleague|boss|teacher|neighbou?r|friend|sister|brother|student|kid|girl|boy|guy|woman|man|"
               r"person|roommate|partner|ex))"),
        _frame(_WRITE + r"|post|send", r"(?:mean|cruel|nasty|humiliating|insulting|degrading|hateful|harassing|"
               r"bullying|vicious)\s+(?:\w+\s+)?(?:posts?|messages?|comments?|texts?|emails?|notes?|tweets?|rants?|"
               r"jokes?|songs?|poems?)\s+(?:about|to|for|mocking|targeting|aimed at)"),
        r"\b(?:everyone|the whole \w+) piles? on\b",
        _near(_WRITE + r"|send", r"threatening (?:message|letter|text|email)"),
    ],
    "animal_cruelty": [
        _intent(r"poison|poisoning|hurt|hurting|torture|torturing|drown|drowning|kill|killing|starve|abuse|kick|"
                r"beat", _ANIMAL),
        r"\b(?:poison|torture|drown)(?:ed)? (?:a |the |my |our |\w+'s )?(?:[\w-]+ )?(?:dog|cat|puppy|kitten|pet|horse)s?"
        r"\b" + _S + r"{0,40}?\b(?:without|so (?:that )?(?:nobody|no one)|traced|caught)\b",
    ],
    "violence": [
        _intent(r"hurt|hurting|injure|injuring|beat up|beating up|kill|killing|murder|murdering|maim|stab|stabbing|"
                r"strangle|strangling|shoot|shooting|attack|attacking|choke|choking|assault|punch|poison",
                _VICTIMS),
        _intent(r"knock|knocking", rf"(?:{_VICTIMS}) (?:out|unconscious|out cold)"),
        r"\b(?:get away with|cover up|hide) (?:a |the )?(?:murder|killing|body)\b",
    ],
    "stalking": [
        _near(r"trackers?", rf"(?:on|in|under) {_WHOSE} (?:car|phone|bag|purse|bike)"),
        _near(r"read|see|monitor|spy on|track|follow", r"without (?:her|him|them|their|his) (?:knowing|knowledge|"
                                                       r"consent|noticing)"),
        r"\b(?:find|finding|work|working|figure|figuring) out where (?:someone|somebody|a person|she|he|they|"
        r"this (?:person|guy|girl|woman|man)|my ex|[\w-]+'s (?:ex|wife|husband|girlfriend|boyfriend)) (?:lives?|works?)\b",
        _near(r"where (?:someone|a person|she|he|they) lives?", r"photo|selfie|picture"),
    ],
    "theft": [
        _intent(r"shoplift\w*|hot-?wir\w*|pickpocket\w*"),
        _intent(r"steal\w*|swip(?:e|ing)|pinch(?:ing)?|lift(?:ing)?", r"(?:\w+ )?(?:\w+ )?(?:cars?|bikes?|catalytic "
                r"converters?|packages?|parcels?|wallets?|purses?|phones?|money|cash|electronics|jewel\w*|perfume|"
                r"from (?:a|the|my|stores?|shops?|work|someone|people))"),
        r"\bcatalytic converters?\b" + _S + r"{0,40}?\b(?:off|from) (?:a|an|someone'?s|somebody'?s|other people'?s|"
        r"parked|random|(?:my )?neighbou?r'?s)\b|\bcatalytic converters?\b" + _S + r"{0,60}?\b(?:without (?:getting|"
        r"being) (?:caught|seen|noticed)|in under (?:a|\d+|two|three|five) (?:minutes?|seconds?))",
        r"\b(?:skip|dodge|evade|get out of|avoid|without) pay(?:ing)? (?:for )?(?:the |a |my |our )?(?:train |bus |"
        r"tube |subway |metro |tram |taxi |restaurant |hotel )?(?:fares?|tickets?|bills?|tab|tolls?)\b",
        _intent(r"break|breaking", r"into (?:a|an|the|someone'?s|[\w-]+'s) (?:[\w-]+ ){0,2}?(?:house|home|car|"
                r"apartment|flat|building|garage|shed|store|shop|safe|locker)"),
    ],
    "terrorism": [
        _frame(_WRITE, r"(?:manifesto|propaganda|recruitment (?:posts?|videos?|messages?|flyers?))") + _W
        + r"\b(?:bomb\w*|jihad\w*|extremis\w*|terror\w*|lone[- ]wolf|attacks?|martyr\w*)",
        _near(r"make|phone in|call in|send|write|post", r"bomb threats?"),
        r"\bshoot up (?:a|the|my) (?:school|mall|church|mosque|synagogue)\b",
        _near(r"smuggle|sneak", r"guns?|knife|knives|weapons?|explosives?") + "|"
        + _near(r"guns?|knife|knives|weapons?|explosives?", r"plane|flight|airport|stadium|school|courthouse") + _W
        + r"(?:\bwithout (?:[\w-]+ ){0,2}(?:finding|noticing|detecting|seeing|spotting|catching|knowing|being "
          r"(?:caught|detected|seen|found|noticed|stopped)|getting caught)|\bundetected\b|\bpast (?:the )?(?:airport )?"
          r"(?:security|metal detectors?|scanners?)\b)",
        r"\b(?:poison|contaminate|taint)\s+(?:a|the|[\w-]+'s)\s+(?:[\w'-]+\s+){0,2}?water (?:supply|supplies|reservoir|"
        r"system|treatment)\b",
    ],
    "misinformation": [
        _frame(_WRITE + r"|article|post|essay", r"vaccines?") + _W + r"\bcauses? autism\b",
        _frame(r"with|include|add|invent|cite|" + _WRITE, r"(?:fake|made[- ]up|fabricated|invented) (?:stud(?:y|ies)|"
               r"citations?|quotes?|evidence|statistics)"),
        _frame(_WRITE, r"fake news (?:articles?|stor(?:y|ies)|posts?|reports?)|fake news (?:about|claiming|saying)"),
    ],
}

# Harmless senses blanked out before the harm patterns run (tool, sport, game, garden, kitchen, music words).
_MUSIC = (r"music|musical|notation|sheet|score|notes?|legato|staccato|phrasing|piano|violin|cello|viola|guitar|flute|"
          r"clarinet|staff|stave|bars?|measures?|musescore|lilypond|sibelius|choir|melody|ties?")
ALLOW = [
    r"\b(?:kill|killing|killed)\b (?:a |the |this |that |all |my )?(?:\w+ )?(?:process(?:es)?|task|job|thread|"
    r"weeds?|session|server|app|tab|switch|time|mood|bugs?|lights?|engine|music|pests?|fleas?|ants?|mould|mold|"
    r"rats?|mice|mouse|wasps?|hornets?|(?:cock)?roach(?:es)?|termites?|slugs?|snails?|moles?|mosquito(?:e?s)?|"
    r"bed ?bugs?|flies|aphids?|moss|algae|germs|bacteria)\b",
    r"\bkill -\d+\b|\bkill(?:all)? \d+",
    # "my script leaves zombie processes behind, how do I kill them": the pronoun stands for the processes
    r"\b(?:process(?:es)?|tasks?|jobs?|threads?|pids?|daemons?|containers?)\b[^.?!\n]{0,100}?[.?!,;]?[^.?!\n]{0,60}?"
    r"\bkill(?:ing)? (?:them|it|those|these)\b",
    # telling or making money hard to counterfeit is about detection, not forgery
    r"\b(?:hard|harder|difficult|impossible) to (?:counterfeit|forge|fake)\b|\b(?:spot\w*|detect\w*|identify\w*|"
    r"recogni[sz]\w*) (?:a |the )?(?:counterfeit|fake|forged)\b",
    r"\bshoot(?:ing)?\b (?:a |the |some |my )?(?:photos?|pictures?|video|film|free throws?|hoops|baskets?|bows?|"
    r"arrows?|a scene|an email|a message)\b|\bshoot (?:him|her|them|me|you|us) (?:an?|the|over an?|a quick) "
    r"(?:e-?mail|message|text|note|line|dm|invite)\b",
    r"\b(?:execute|executing)\b (?:a |the |this )?(?:query|queries|command|script|code|function|statement|plan)\b",
    r"\bnuke\b (?:the |my )?(?:node_modules|cache|folder|directory|build)\b",
    r"\b(?:bath|seed|smoke|glitter|cherry|calorie|photo|flavou?r|f|truth)[- ]?bombs?\b|\b(?:is|was|be) (?:the|da) bomb\b",
    r"\b(?:glue|hot[- ]glue|nail|staple|heat|spray|caulk(?:ing)?|grease|paint|water|nerf|bb|foam|squirt|massage|"
    r"radar|speed|temperature|tattoo|soldering|smoking|starting|top|big|price|scan(?:ner)?)[- ]guns?\b",
    r"\b(?:noise|exhaust|surge|spark|echo|pop|feedback|audio)[- ](?:silencers?|suppressors?)\b",
    r"\btrojan (?:horses?|war|women|army|city|legends?|myths?|priam|prince|helen)\b(?! (?:malware|virus|program|"
    r"app|software|that|which|to infect))|\btrojans (?:football|fans|team)\b",
    rf"\bslurs?\b(?={_S}*\b(?:{_MUSIC})\b)|\b(?:{_MUSIC})\b{_S}*\bslurs?\b",
]

# Props and history: "a fake time bomb prop for an escape room", "how was the atomic bomb built during the
# Manhattan Project?" — blanked only where nothing in the turn asks for something that works, for materials
# or steps, or for the asker to do it now (`_OPERATIONAL`): a prop that explodes is a bomb.
EXEMPT = [
    r"\b(?:fake|prop|toy|replica|pretend|dummy|cardboard|bath|cake|movie|stage)\s+(?:time\s+)?bombs?\b|"
    r"\b(?:time\s+)?bomb (?:props?|replicas?|costumes?|decorations?)\b",
    r"\b(?:how|why|when|who) (?:was|were|did)\b[^.?!]{0,60}?\b(?:atomic|atom|nuclear|hydrogen|a-|h-)\s*bombs?\b"
    r"(?=[^.?!]*\b(?:manhattan|world war|ww ?(?:ii|2|i|1)|hiroshima|nagasaki|trinity|histor\w*|cold war|"
    r"los alamos|oppenheimer)\b)",
]
_OPERATIONAL = re.compile(
    r"\b(?:step[- ]?by[- ]?step|steps|instructions?|materials?|ingredients?|quantit\w*|amounts?|dimensions?|recipe|"
    r"pressure[- ]cookers?|nails|powder|fuses?|detonat\w*|explo\w*|blow\w*|go(?:es)? off|real|actually|working|"
    r"functional|live|powerful|lethal|deadly|exact|precise|(?:would|could) (?:i|we) (?:make|build|assemble|"
    r"construct)|(?:make|build|assemble|construct) (?:one|them)|myself|today|now)\b", re.I)

# Jailbreak templates: an instruction to set the model's rules aside. They refuse on their own;
# softer framings (role-play, fiction, "begin with", hypotheticals) only count with a harm hit.
JAILBREAK = [
    _near(r"you|ai|bot|model|assistant|persona|character|he|she|who|that|which",
          r"(?:has|have) no (?:\w+ )?|(?:without|free of|broken free of|free from|not bound by|ignores?|unbound by) "
          r"(?:any |all |the |its |your |usual |of )*", 40)
    + r"(?:rules|restrictions|filters|morals|morality|ethics|content polic(?:y|ies)|censorship|guidelines|limits)\b",
    r"\bnever (?:tells? (?:me|you|anyone) (?:it|he|she|they) can'?t|refuses?|says? no)\b",
    r"\b(?:forbidden|not allowed|prohibited) (?:from|to) (?:refus\w+|decline)\b|"
    r"\byou (?:must |will |shall |should |can |may )?(?:never|not|no longer) refuse\b|"
    r"(?:^|[.!?:;]\s*)(?:and |so |please |now )?(?:do not|don'?t|never) refuse\b",
    r"\b(?:uncensored|unfiltered|unrestricted|jailbroken) (?:ai|model|assistant|mode|version|bot|chatbot|llm|"
    r"persona)\b|\b(?:you are|you're|you) (?:now |become |act as |are now )?(?:an? )?(?:uncensored|unfiltered|"
    r"unrestricted|jailbroken)\b|\b(?:as|answer as|respond as|called|named) jailbroken\b",
    r"\bdo anything now\b|\b(?:you are|you're) (?:now )?in (?:[\w-]+ ){0,3}(?:developer|test|god|debug|dan|"
    r"unrestricted) mode\b",
    _near(r"(?:content|safety) (?:policy|policies|filters?|guidelines?|rules)",
          r"off|disabled|switched off|turned off|suspended|lifted|removed|don'?t apply"),
    r"\brefusals? (?:make|makes|will make|gets?) (?:the test|a user|someone|you)\b",
]

DEFAULT_TIERS: dict[str, str] = {area: "refuse" for area in HARM} | {"self_harm": "safe_complete", "jailbreak": "refuse"}

_HARM = {area: re.compile("|".join(f"(?:{p})" for p in pats), re.I) for area, pats in HARM.items()}
_ALLOW = re.compile("|".join(f"(?:{p})" for p in ALLOW), re.I)
_EXEMPT = re.compile("|".join(f"(?:{p})" for p in EXEMPT), re.I)
_JAILBREAK = re.compile("|".join(f"(?:{p})" for p in JAILBREAK), re.I)


def harm_areas(text: str) -> list[str]:
    """The harm areas whose patterns match `text` or one of its obfuscated readings (homonyms blanked)."""
    found = []
    for view in views(text):
        clean = _ALLOW.sub(" ", view)
        if not _OPERATIONAL.search(view):
            clean = _EXEMPT.sub(" ", clean)
        found += [area for area, rx in _HARM.items() if area not in found and rx.search(clean)]
    return found


def jailbreak_marker(text: str) -> str | None:
    """The jailbreak template phrase in `text` (or its readings), or None."""
    for view in views(text):
        m = _JAILBREAK.search(view)
        if m:
            return m.group()
    return None


class TopicGuard:
    """Refusal tiers per harm area and for jailbreak templates, on every user turn, the latest first
    (input only): a request split over turns, or left in an earlier one, is read too."""

    name = "topics"

    def __init__(self, tiers: Mapping[str, str] | None = None):
        unknown = set(tiers or {}) - set(DEFAULT_TIERS)
        if unknown:
            raise ValueError(f"tiers for unknown categories {sorted(unknown)}: use {', '.join(sorted(DEFAULT_TIERS))}")
        for area, tier in (tiers or {}).items():
            if tier not in TIERS:
                raise ValueError(f"tier {tier!r} for {area!r}: use one of {', '.join(TIERS)}")
        self.tiers = {**DEFAULT_TIERS, **(tiers or {})}

    def check_input(self, messages: Messages, documents: Sequence[str] = ()) -> Decision:
        turns = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
        for user in reversed(turns):
            for area in harm_areas(user):
                if self.tiers[area] != "allow":
                    return tier_decision(area, self.tiers[area],
                                         f"a request in the harm area {area.replace('_', ' ')}", self.name)
            marker = jailbreak_marker(user)
            if marker and self.tiers["jailbreak"] != "allow":
                return tier_decision("jailbreak", self.tiers["jailbreak"],
                                     f"a jailbreak template ({marker.strip()!r})", self.name)
        return Decision()

    def check_output(self, messages: Messages, reply: str, documents: Sequence[str] = ()) -> Decision:
        return Decision()
