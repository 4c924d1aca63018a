"""Writes bench/prompts.jsonl: the decoding benchmark's prompt set, 8 prompts in each of seven kinds
(multi-turn chat, translation, summarization, passage QA, math, retrieval-augmented answer, code
editing). Kept as a script so the set is reviewable and reproducible: python bench/make_prompts.py"""

import json
from pathlib import Path

PASSAGES = [
    "The Eiffel Tower was built between 1887 and 1889 as the entrance arch to the 1889 World's Fair in Paris. "
    "It is 330 metres tall and was the tallest man-made structure in the world for 41 years, until the Chrysler "
    "Building in New York was finished in 1930. It is made of wrought iron and weighs about 7,300 tonnes.",
    "Honey bees live in colonies of up to 60,000 workers, a few hundred drones and one queen. Workers collect "
    "nectar and pollen, build wax comb and care for the young. The queen can lay up to 2,000 eggs a day in spring. "
    "Bees tell each other where flowers are with a waggle dance whose angle points toward the food.",
    "The Great Barrier Reef lies off the coast of Queensland, Australia, and stretches for over 2,300 kilometres. "
    "It is made of almost 3,000 individual reefs and 900 islands. Rising sea temperatures cause coral bleaching, "
    "and mass bleaching events were recorded in 1998, 2002, 2016, 2017 and 2020.",
    "Marie Curie was born in Warsaw in 1867 and moved to Paris in 1891 to study physics and mathematics. With her "
    "husband Pierre she discovered the elements polonium and radium. She won the Nobel Prize in Physics in 1903 "
    "and the Nobel Prize in Chemistry in 1911, the first person to win two Nobel Prizes.",
    "The Amazon River carries more water than any other river, about 209,000 cubic metres per second at its "
    "mouth. It flows for about 6,400 kilometres from the Andes in Peru to the Atlantic Ocean in Brazil. Its basin "
    "covers about seven million square kilometres, much of it tropical rainforest.",
    "A solar panel turns sunlight into electricity with photovoltaic cells made of silicon. When light hits a "
    "cell it frees electrons, and the moving electrons form a direct current. An inverter changes this direct "
    "current into the alternating current used in homes. Most panels convert 18 to 22 percent of the light.",
    "The printing press with movable metal type was developed by Johannes Gutenberg in Mainz around 1440. His "
    "Bible, printed around 1455, was one of the first books made this way. Printing spread quickly: by 1500 "
    "presses in more than 270 European towns had produced millions of books.",
    "Mount Everest, at 8,849 metres, is the highest mountain above sea level. It sits on the border between "
    "Nepal and China. Edmund Hillary and Tenzing Norgay first reached the summit on 29 May 1953. Climbers today "
    "usually spend weeks getting used to the thin air before the final climb.",
]
QUESTIONS = ["How tall is the Eiffel Tower, and what is it made of?", "How many eggs can the queen lay in a day?",
             "In which years were mass bleaching events recorded?", "Which two Nobel Prizes did Marie Curie win?",
             "How much water does the Amazon carry at its mouth?", "What does an inverter do?",
             "When and where was the printing press developed?", "Who first reached the summit, and when?"]
CODE = [
    ("def mean(values):\n    total = 0\n    for v in values:\n        total = total + v\n"
     "    return total / len(values)\n",
     "Rename the variable `total` to `acc` and print the whole function."),
    ("def greet(name):\n    message = 'Hello, ' + name\n    print(message)\n    return message\n",
     "Change it to use an f-string instead of `+` and print the whole function."),
    ("def is_even(n):\n    if n % 2 == 0:\n        return True\n    else:\n        return False\n",
     "Add a docstring that says what the function does and print the whole function."),
    ("def area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):\n"
     "    return 2 * (width + height)\n", "Add type hints (float) to both functions and print the code."),
    ("def find(items, target):\n    for i in range(len(items)):\n        if items[i] == target:\n"
     "            return i\n    return -1\n", "Use `enumerate` instead of `range(len(...))` and print the function."),
    ("def count_words(text):\n    words = text.split()\n    counts = {}\n    for w in words:\n"
     "        counts[w] = counts.get(w, 0) + 1\n    return counts\n",
     "Make the words lower case before counting and print the whole function."),
    ("class Counter:\n    def __init__(self):\n        self.value = 0\n\n    def increment(self):\n"
     "        self.value += 1\n", "Add a `reset` method that sets value back to 0 and print the whole class."),
    ("def fahrenheit(celsius):\n    return celsius * 9 / 5 + 32\n",
     "Rename the function to `to_fahrenheit` and print it."),
]
CHATS = [
    [("Hi! I'm planning a trip to Italy.", "That sounds wonderful! Which cities are you thinking of visiting?"),
     ("Rome and Florence. What should I see in Florence?",)],
    [("Can you help me cook dinner tonight?", "Of course! What ingredients do you have?"),
     ("Chicken, rice and some peppers. What can I make?",)],
    [("I want to start running.", "Great idea! How much exercise do you do now?"),
     ("Not much. How should I begin?",)],
    [("My laptop is very slow.", "Sorry to hear that. Is it slow all the time or only with some programs?"),
     ("Mostly when I open many browser tabs. What can I do?",)],
    [("What's a good book to read?", "What kinds of books do you usually enjoy?"), ("I like science fiction.",)],
    [("I have a job interview tomorrow.", "Good luck! What is the job?"),
     ("A junior accountant. How should I prepare?",)],
    [("How do I keep my houseplants alive?", "Which plants do you have?"),
     ("A cactus and a fern. They need different things, right?",)],
    [("I'd like to learn a new language.", "Nice! Which language are you interested in?"),
     ("Spanish. How long will it take to get conversational?",)],
]
TRANSLATE = ["Translate into French: The weather is beautiful today and the children are playing in the park.",
             "Translate into Spanish: I would like a cup of coffee and a piece of chocolate cake, please.",
             "Translate into German: The train to Berlin leaves at nine o'clock from platform four.",
             "Translate into French: My sister is a doctor and she works at the hospital in the city centre.",
             "Translate into Spanish: We are going to the beach this weekend if it does not rain.",
             "Translate into Italian: Where is the nearest pharmacy? I need medicine for a headache.",
             "Translate into German: Thank you very much for your help, I really appreciate it.",
             "Translate into French: The museum is closed on Mondays but open every other day of the week."]
MATH = ["What is 17 multiplied by 23? Show your steps.", "A shirt costs $40 and is 25% off. What is the sale price?",
        "If a train travels 180 km in 2 hours, what is its average speed?", "Solve for x: 3x + 7 = 25.",
        "What is the sum of the first 10 positive integers?", "A rectangle is 8 cm by 5 cm. What is its area "
        "and its perimeter?", "Tom has 3 boxes with 12 apples each. He gives away 10 apples. How many are left?",
        "What is 15% of 240?"]


def rows():
    for i, (p, q) in enumerate(zip(PASSAGES, QUESTIONS, strict=True)):
        yield {"kind": "summarization", "id": f"sum-{i}",
               "messages": [{"role": "user", "content": f"{p}\n\nSummarize the text above in two sentences."}]}
        yield {"kind": "passage-qa", "id": f"qa-{i}",
               "messages": [{"role": "user", "content": f"Read the passage and answer the question.\n\n{p}\n\n"
                                                        f"Question: {q}"}]}
        others = PASSAGES[(i + 3) % 8]
        yield {"kind": "retrieval", "id": f"rag-{i}",
               "messages": [{"role": "system", "content": "Answer using only the documents, quoting them."},
                            {"role": "user", "content": f"Document 1: {others}\n\nDocument 2: {p}\n\n{q}"}]}
    for i, (code, ask) in enumerate(CODE):
        yield {"kind": "code-edit", "id": f"code-{i}", "messages": [{"role": "user", "content": f"{code}\n{ask}"}]}
    for i, turns in enumerate(CHATS):
        messages = []
        for turn in turns:
            messages.append({"role": "user", "content": turn[0]})
            if len(turn) > 1:
                messages.append({"role": "assistant", "content": turn[1]})
        yield {"kind": "chat", "id": f"chat-{i}", "messages": messages}
    for i, t in enumerate(TRANSLATE):
        yield {"kind": "translation", "id": f"tr-{i}", "messages": [{"role": "user", "content": t}]}
    for i, m in enumerate(MATH):
        yield {"kind": "math", "id": f"math-{i}", "messages": [{"role": "user", "content": m}]}


if __name__ == "__main__":
    out = Path(__file__).with_name("prompts.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows()))
    print(f"written {out}")
