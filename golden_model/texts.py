"""Built-in evaluation texts: short sentences, mid-length passages and long paragraphs.

Written for this project. They vary in topic, register and length (a handful
of tokens up to past 256) so that attention rows of every length appear.
"""

SHORT = (
    "The cat slept on the warm windowsill.",
    "Interest rates rose for the third month in a row.",
    "Please restart the router before calling support.",
    "Photosynthesis turns light into chemical energy.",
    "She finished the marathon in under four hours.",
    "The bridge was closed after the storm damaged its cables.",
    "Add two cups of flour and stir until smooth.",
    "Why does the moon look larger near the horizon?",
    "Our flight was delayed because of fog in Amsterdam.",
    "The committee postponed its vote until next week.",
    "A prime number has exactly two divisors.",
    "He plays the cello in a small chamber orchestra.",
    "The museum opens at nine on weekdays.",
    "Bacteria can develop resistance to antibiotics.",
    "Turn left at the bakery and walk two blocks.",
    "The compiler rejected the program with a type error.",
    "Glaciers in the Alps have shrunk for decades.",
    "My grandmother still writes letters by hand.",
    "The striker scored twice in the second half.",
    "Solar panels lose efficiency when they get hot.",
    "Is this seat taken?",
    "The library extended its opening hours during exams.",
    "Volcanic ash grounded flights across northern Europe.",
    "A good night's sleep improves memory consolidation.",
    "The startup raised money to build cheaper batteries.",
    "Dolphins communicate with clicks and whistles.",
    "The recipe calls for fresh basil, not dried.",
    "The train to Lyon leaves from platform seven.",
    "Quantum computers exploit superposition and entanglement.",
    "He apologized for missing the meeting.",
    "The painting was sold at auction for a record price.",
    "Heavy rain is expected along the coast tonight.",
    "The new policy reduces paperwork for small firms.",
    "Children learn languages faster than adults do.",
    "The server crashed when its disk filled up.",
    "A bee visits thousands of flowers in a single day.",
    "The jury found the defendant not guilty.",
    "Wind turbines now supply a fifth of the country's power.",
    "Can you recommend a good book about the history of mathematics?",
    "The price of coffee beans doubled after a poor harvest in Brazil.",
    "The hikers reached the summit just before the clouds rolled in.",
    "Memory bandwidth, not arithmetic, limits many inference workloads.",
)

MEDIUM = (
    "The city council approved a plan to turn the old rail yard into a park, with walking "
    "paths, a community garden and a small amphitheater. Construction is expected to begin "
    "in the spring and to take about two years, funded partly by a regional grant.",
    "To reset your password, open the settings page, choose security, and select the option "
    "to send a recovery link. The link expires after thirty minutes, so use it promptly, and "
    "contact the help desk if the message does not arrive.",
    "Researchers tracked the migration of arctic terns with tiny geolocators and found that "
    "some birds flew more than ninety thousand kilometres in a year, following winds over the "
    "Atlantic rather than the shortest path between their breeding and wintering grounds.",
    "The quarterly report showed revenue growth of twelve percent, driven mainly by subscriptions "
    "in Asia, while hardware sales declined. Management expects margins to improve once the new "
    "factory reaches full capacity later in the year.",
    "In a transformer, each attention head compares a query with every key, turns the scores into "
    "probabilities with a softmax, and averages the value vectors with those weights. Most of the "
    "probability mass usually lands on a few keys, which is what sparse attention exploits.",
    "The old lighthouse keeper kept a logbook for forty years, noting every ship that passed, the "
    "weather at dawn and dusk, and the birds that rested on the railing. His entries are now an "
    "unexpected source for historians of the coastal climate.",
    "Before the exam, the students formed study groups, divided the syllabus into chapters and "
    "quizzed one another every evening. Those who explained the material aloud to their peers "
    "remembered it better than those who only reread their notes.",
    "A hardware accelerator spends energy every time a wire changes its value. Clock gating and "
    "operand isolation keep idle units from toggling, so a design that knows which work is "
    "unnecessary can leave large parts of the chip dark and save power.",
)

LONG = (
    "When the river flooded in the autumn of that year, the whole valley changed within a few days. "
    "Farmers who had watched the water rise slowly for a week suddenly found their fields turned into "
    "shallow lakes, and the roads that connected the villages disappeared under brown, fast-moving "
    "currents. The regional authorities opened emergency shelters in the school gymnasiums, where "
    "families slept on camp beds and volunteers served soup from enormous pots. Engineers worked through "
    "the nights to reinforce the dykes with sandbags, while helicopters carried supplies to the hamlets "
    "on the hills that could no longer be reached by car. Once the water finally retreated, it left "
    "behind a thick layer of silt, broken fences, drowned livestock and houses whose walls would stay "
    "damp for months. Insurance assessors arrived with clipboards and cameras, and the arguments about "
    "who should pay for the damage began almost at once. Yet the flood also brought people together in "
    "ways nobody expected: neighbours who had not spoken for years shared tools and labour, the baker "
    "gave away bread every morning, and the children organized a collection of books to replace the ones "
    "the library had lost. A decade later, the villagers still date events as before or after the flood, "
    "and the new flood wall, built with money from the national government, carries a small plaque with "
    "the names of those who helped.",
    "Designing a processor is an exercise in trade-offs. A wider pipeline can execute more instructions "
    "per cycle, but it needs more register file ports, larger bypass networks and more complex scheduling "
    "logic, all of which cost area and energy and may lengthen the critical path. Deeper pipelines allow "
    "higher clock frequencies, but they make branch mispredictions more expensive, because more "
    "partially executed work has to be thrown away. Caches hide the latency of main memory, yet every "
    "additional kilobyte of cache takes silicon that could have been spent on arithmetic units. "
    "Specialized accelerators push these trade-offs further: by fixing the dataflow of one family of "
    "computations, such as matrix multiplication or attention, they remove most of the control overhead "
    "of a general processor and spend their transistors on multipliers and local memories. The price is "
    "flexibility. An accelerator that is perfect for today's models may be awkward for tomorrow's, and "
    "its designers have to guess which operations will still matter by the time the chip is "
    "manufactured, often two or three years after the design begins. Good co-design therefore keeps the "
    "algorithm and the hardware in one loop: every change to the model is checked against what the "
    "silicon can do cheaply, and every hardware idea is checked against whether the model's accuracy "
    "survives it. Tools that measure both sides honestly, with the same inputs and the same definitions, "
    "are what make that loop fast enough to be useful.",
    "The expedition left the coastal town in early June, when the snow on the passes had melted enough "
    "for the mules to climb. There were eleven of them: a botanist, two geologists, a photographer, a "
    "doctor, the cook, four porters and the guide, an old man who had crossed the range more times than "
    "he could count and who spoke little except to warn them about the weather. For the first week the "
    "path followed the river through forests of pine and birch, and the botanist filled notebook after "
    "notebook with sketches of flowers that nobody in the capital had ever catalogued. Then the trees "
    "thinned, the air became cold and thin, and the days were spent walking across fields of loose stone "
    "under a sky so blue that it seemed almost black at noon. The photographer struggled with his heavy "
    "glass plates, which cracked in the frost, and the geologists argued every evening about the origin "
    "of the red bands in the cliffs. On the nineteenth day a storm trapped them for three nights in a "
    "shepherd's hut, where they burned dried dung for warmth and listened to the wind tearing at the roof. "
    "When it cleared, the valley on the far side lay below them, green and unexpectedly wide, with a lake "
    "that appeared on none of their maps. The doctor wrote in his diary that he had never been so tired "
    "or so happy, and the guide, for the only time on the journey, laughed out loud.",
    "Sparse attention methods differ mainly in how they decide which connections to keep. Fixed patterns, "
    "such as sliding windows or strided blocks, are cheap to compute and easy to map onto hardware, but "
    "they ignore the content of the sequence and can miss a distant token that matters. Content-based "
    "methods look at the scores themselves: top-k selection keeps a fixed number of keys per query, "
    "while threshold or mass-based rules keep as many keys as are needed to cover a chosen fraction of "
    "the probability mass. The mass rule adapts to each row. A query whose attention is concentrated on "
    "one or two tokens keeps only those, while a query with a flat distribution keeps many, up to a cap "
    "that bounds the worst case. For a hardware designer, the cap matters as much as the average: it "
    "fixes how many multiply-accumulate slots a row can ever need, and therefore how the array and its "
    "buffers must be sized. For a model designer, the question is how much quality is lost. Measuring it "
    "on real text, rather than on random inputs, is essential, because trained attention heads are far "
    "from random: some attend almost entirely to the separator token, some to the previous word, some "
    "spread their attention evenly across a whole sentence. A gate that is harmless for one kind of head "
    "can be destructive for another, so a useful report shows both the average and the worst case.",
)

TEXTS = SHORT + MEDIUM + LONG
