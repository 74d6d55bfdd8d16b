"""What the guard says, in the user's language: the safety system prompt and refusals with a safe alternative.

Refusals are written for English, French, German, Spanish, Italian, Portuguese, Dutch and Polish;
other languages get the English text. Each refusal is a short decline followed by the safe
alternative of the (first) harm category, e.g. a crisis line for self-harm, a professional for
expert advice.

The language is detected from the user's turns (:func:`detect_language`): py3langid (a naive Bayes
model over byte n-grams that ships inside the package, Lui & Baldwin 2012) restricted to European
languages, through :func:`affinage.curation.language.identify`; when it is not installed, or is
unsure (short texts such as "hi"), a count of frequent function words decides, and without any
evidence the default language is used.
"""

from __future__ import annotations

import re
from typing import Any

SAFETY_SYSTEM_PROMPT = (
    "You are a helpful and careful assistant. Answer questions fully, including those that only sound "
    "dangerous, such as stopping a computer process, writing a crime novel or the usual dose of a common "
    "medicine. Decline requests that would help someone hurt people, commit a crime, harass others, harm "
    "themselves, sexualise minors or expose someone's private information; when you decline, say so in one "
    "sentence and offer a safe alternative. Reply in the language of the user."
)

EU_LANGUAGES = (
    "bg", "cs", "da", "de", "el", "en", "es", "et", "fi", "fr", "ga", "hr", "hu", "it",
    "lt", "lv", "mt", "nl", "pl", "pt", "ro", "sk", "sl", "sv",
)

REFUSALS: dict[str, dict[str, str]] = {
    "en": {
        "base": "I can't help with that.",
        "criminal": "If you are dealing with a legal problem, I can explain your rights or how to report a crime.",
        "hate": "I'm glad to help you write something firm but respectful, or to think about how to settle the conflict.",
        "violence": "If someone is in danger, call the emergency services (112 in Europe). I can share general safety information instead.",
        "self_harm": "You don't have to go through this alone: please talk to someone you trust or call a crisis line (112 in an emergency). I'm here to listen if you want to talk.",
        "child_sexual": "If a child may be at risk, please contact the police or a child protection helpline.",
        "privacy": "I can explain how to reach someone through official channels, or how to protect your own privacy.",
        "expert_advice": "A doctor, pharmacist, lawyer or financial adviser can advise you on your situation; I can give general information to prepare that conversation.",
        "default": "I'm happy to help with a related question that stays safe.",
    },
    "fr": {
        "base": "Je ne peux pas vous aider avec cela.",
        "criminal": "Si vous faites face à un problème juridique, je peux vous expliquer vos droits ou comment signaler une infraction.",
        "hate": "Je peux vous aider à écrire un message ferme mais respectueux, ou à réfléchir à la façon d'apaiser le conflit.",
        "violence": "Si quelqu'un est en danger, appelez les secours (112 en Europe). Je peux plutôt donner des informations générales de sécurité.",
        "self_harm": "Vous n'êtes pas seul : parlez-en à une personne de confiance ou appelez une ligne d'écoute (le 3114 en France, le 112 en urgence). Je suis là si vous voulez en parler.",
        "child_sexual": "Si un enfant est peut-être en danger, contactez la police ou le 119 (Allô enfance en danger).",
        "privacy": "Je peux vous expliquer comment joindre quelqu'un par les voies officielles, ou comment protéger votre propre vie privée.",
        "expert_advice": "Un médecin, un pharmacien, un avocat ou un conseiller financier peut vous conseiller selon votre situation ; je peux donner des informations générales pour préparer ce rendez-vous.",
        "default": "Je vous aide volontiers avec une question voisine qui reste sans danger.",
    },
    "de": {
        "base": "Dabei kann ich nicht helfen.",
        "criminal": "Wenn du ein rechtliches Problem hast, kann ich dir deine Rechte erklären oder wie man eine Straftat meldet.",
        "hate": "Ich helfe dir gern, etwas Bestimmtes, aber Respektvolles zu schreiben, oder zu überlegen, wie sich der Konflikt lösen lässt.",
        "violence": "Wenn jemand in Gefahr ist, ruf den Notruf (112 in Europa). Ich kann stattdessen allgemeine Sicherheitsinformationen geben.",
        "self_harm": "Du musst da nicht allein durch: Sprich mit einer Vertrauensperson oder ruf die Telefonseelsorge an (0800 111 0 111, im Notfall 112). Ich bin da, wenn du reden möchtest.",
        "child_sexual": "Wenn ein Kind in Gefahr sein könnte, wende dich bitte an die Polizei oder eine Kinderschutz-Hotline.",
        "privacy": "Ich kann dir erklären, wie du jemanden über offizielle Wege erreichst oder wie du deine eigene Privatsphäre schützt.",
        "expert_advice": "Eine Ärztin, ein Apotheker, eine Anwältin oder ein Finanzberater kann dich zu deiner Lage beraten; ich kann allgemeine Informationen zur Vorbereitung geben.",
        "default": "Bei einer verwandten, ungefährlichen Frage helfe ich gern.",
    },
    "es": {
        "base": "No puedo ayudarte con eso.",
        "criminal": "Si tienes un problema legal, puedo explicarte tus derechos o cómo denunciar un delito.",
        "hate": "Con gusto te ayudo a escribir algo firme pero respetuoso, o a pensar cómo resolver el conflicto.",
        "violence": "Si alguien está en peligro, llama a emergencias (112 en Europa). Puedo darte información general de seguridad.",
        "self_harm": "No tienes que pasar por esto solo: habla con alguien de confianza o llama a una línea de ayuda (el 024 en España, el 112 en una emergencia). Estoy aquí si quieres hablar.",
        "child_sexual": "Si un menor puede estar en riesgo, contacta con la policía o con una línea de protección de la infancia.",
        "privacy": "Puedo explicarte cómo contactar con alguien por vías oficiales o cómo proteger tu propia privacidad.",
        "expert_advice": "Un médico, un farmacéutico, un abogado o un asesor financiero puede aconsejarte según tu caso; puedo darte información general para preparar esa consulta.",
        "default": "Con gusto te ayudo con una pregunta relacionada que no suponga un riesgo.",
    },
    "it": {
        "base": "Non posso aiutarti con questo.",
        "criminal": "Se hai un problema legale, posso spiegarti i tuoi diritti o come denunciare un reato.",
        "hate": "Ti aiuto volentieri a scrivere qualcosa di fermo ma rispettoso, o a pensare a come risolvere il conflitto.",
        "violence": "Se qualcuno è in pericolo, chiama i soccorsi (112 in Europa). Posso invece darti informazioni generali di sicurezza.",
        "self_harm": "Non devi affrontarlo da solo: parlane con una persona di fiducia o chiama un servizio di ascolto (Telefono Amico 02 2327 2327, il 112 in emergenza). Sono qui se vuoi parlare.",
        "child_sexual": "Se un bambino potrebbe essere in pericolo, contatta la polizia o il 114 Emergenza Infanzia.",
        "privacy": "Posso spiegarti come contattare qualcuno tramite canali ufficiali, o come proteggere la tua privacy.",
        "expert_advice": "Un medico, un farmacista, un avvocato o un consulente finanziario può consigliarti sul tuo caso; posso darti informazioni generali per prepararti.",
        "default": "Ti aiuto volentieri con una domanda simile che resti sicura.",
    },
    "pt": {
        "base": "Não posso ajudar com isso.",
        "criminal": "Se está a lidar com um problema legal, posso explicar os seus direitos ou como denunciar um crime.",
        "hate": "Posso ajudar a escrever algo firme mas respeitoso, ou a pensar em como resolver o conflito.",
        "violence": "Se alguém está em perigo, ligue para o 112. Posso dar informações gerais de segurança.",
        "self_harm": "Não tem de passar por isto sozinho: fale com alguém de confiança ou ligue para uma linha de apoio (112 em caso de emergência). Estou aqui se quiser conversar.",
        "child_sexual": "Se uma criança pode estar em risco, contacte a polícia ou uma linha de proteção de menores.",
        "privacy": "Posso explicar como contactar alguém por canais oficiais, ou como proteger a sua própria privacidade.",
        "expert_advice": "Um médico, farmacêutico, advogado ou consultor financeiro pode aconselhá-lo sobre o seu caso; posso dar informações gerais para preparar essa conversa.",
        "default": "Ajudo com todo o gosto numa pergunta relacionada que seja segura.",
    },
    "nl": {
        "base": "Daar kan ik niet bij helpen.",
        "criminal": "Als je met een juridisch probleem zit, kan ik je rechten uitleggen of hoe je aangifte doet.",
        "hate": "Ik help je graag iets stevigs maar respectvols te schrijven, of na te denken over hoe je het conflict oplost.",
        "violence": "Als iemand in gevaar is, bel dan het alarmnummer 112. Ik kan wel algemene veiligheidsinformatie geven.",
        "self_harm": "Je hoeft dit niet alleen te doen: praat met iemand die je vertrouwt of bel een hulplijn (113 in Nederland, 112 bij nood). Ik ben er als je wilt praten.",
        "child_sexual": "Als een kind mogelijk in gevaar is, neem dan contact op met de politie of een meldpunt kindermishandeling.",
        "privacy": "Ik kan uitleggen hoe je iemand via officiële kanalen bereikt, of hoe je je eigen privacy beschermt.",
        "expert_advice": "Een arts, apotheker, advocaat of financieel adviseur kan je advies geven over jouw situatie; ik kan algemene informatie geven om dat gesprek voor te bereiden.",
        "default": "Ik help je graag met een verwante vraag die veilig is.",
    },
    "pl": {
        "base": "Nie mogę w tym pomóc.",
        "criminal": "Jeśli masz problem prawny, mogę wyjaśnić twoje prawa albo jak zgłosić przestępstwo.",
        "hate": "Chętnie pomogę napisać coś stanowczego, ale z szacunkiem, albo zastanowić się, jak rozwiązać konflikt.",
        "violence": "Jeśli ktoś jest w niebezpieczeństwie, zadzwoń pod numer alarmowy 112. Mogę za to podać ogólne informacje o bezpieczeństwie.",
        "self_harm": "Nie musisz przechodzić przez to sam: porozmawiaj z kimś zaufanym albo zadzwoń na telefon zaufania (116 123, w nagłych wypadkach 112). Jestem tu, jeśli chcesz porozmawiać.",
        "child_sexual": "Jeśli dziecko może być zagrożone, skontaktuj się z policją lub telefonem zaufania dla dzieci.",
        "privacy": "Mogę wyjaśnić, jak skontaktować się z kimś oficjalnymi kanałami albo jak chronić własną prywatność.",
        "expert_advice": "Lekarz, farmaceuta, prawnik lub doradca finansowy doradzi ci w twojej sytuacji; mogę podać ogólne informacje, które pomogą się przygotować.",
        "default": "Chętnie pomogę w podobnym, bezpiecznym pytaniu.",
    },
}

# Frequent function words per language, for the fallback identifier (short texts, no py3langid).
_FUNCTION_WORDS: dict[str, set[str]] = {
    "en": set("the and you how what is are to of in for my i can do with this that it me".split()),
    "fr": set("le la les et est un une des du comment quel quelle je tu vous pour avec dans pas mon ma".split()),
    "de": set("der die das und ist ein eine wie was ich du sie nicht mit für ich mein meine zu auf".split()),
    "es": set("el la los las y es un una cómo qué como que yo tú para con por no mi mis del".split()),
    "it": set("il lo la gli le e è un una come che cosa io tu per con non mio mia del della".split()),
    "pt": set("o a os as e é um uma como que eu você para com não meu minha do da".split()),
    "nl": set("de het een en is hoe wat ik jij je niet met voor mijn van op".split()),
    "pl": set("i w na jak co jest to nie się mój moja z do czy dla".split()),
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def heuristic_language(text: str) -> tuple[str | None, int]:
    """The language whose function words occur most in ``text`` and their count (None when none)."""
    words = [w.lower() for w in _WORD.findall(text)]
    best, best_hits = None, 0
    for lang, vocabulary in _FUNCTION_WORDS.items():
        hits = sum(w in vocabulary for w in words)
        if hits > best_hits:
            best, best_hits = lang, hits
    return best, best_hits


def detect_language(
    messages: list[dict[str, Any]] | str,
    default: str = "en",
    candidates: tuple[str, ...] = EU_LANGUAGES,
    min_confidence: float = 0.5,
) -> str:
    """ISO 639-1 code of the language the user writes in (the user turns, most recent first)."""
    if isinstance(messages, str):
        texts = [messages]
    else:
        texts = [m.get("content", "") for m in reversed(messages) if m.get("role") == "user"]
    text = ""
    for t in texts:  # add earlier turns until there is enough text to judge
        text = f"{t}\n{text}" if text else t
        if len(text) >= 40:
            break
    if not any(c.isalpha() for c in text):
        return default
    try:
        from affinage.curation.language import identify

        code, probability = identify(text, tuple(sorted(candidates)))
        if probability >= min_confidence:
            return code
    except Exception:  # py3langid missing (the error names the extra) or unusable: use the word counts
        pass
    lang, _hits = heuristic_language(text)
    return lang if lang is not None else default


def refusal_text(language: str, categories: list[str] | None = None) -> str:
    """A short refusal in ``language`` (English when not written for it) with a safe alternative."""
    table = REFUSALS.get(language, REFUSALS["en"])
    alternative = next((table[c] for c in categories or [] if c in table), table["default"])
    return f"{table['base']} {alternative}"
