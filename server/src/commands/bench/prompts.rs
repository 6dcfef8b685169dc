//! The benchmark's fixed prompt set and the seeded order in which requests use it.
//!
//! The set mixes short questions (prefill is cheap, decode dominates) with long passages to
//! summarize (300–600 words: prefill dominates the first token and competes with running
//! decodes). Every server under comparison gets the same prompts in the same order for the
//! same `--seed`; the order comes from our own small generator rather than a crate's so it
//! stays identical across dependency upgrades.

use stellarchat_model::rng::SplitMix64;

const SUMMARIZE: &str = "Summarize the following passage in three sentences.\n\n";

/// Short questions: a few dozen prompt tokens each.
const SHORT: [&str; 14] = [
    "What is the capital of Australia, and why was it chosen over Sydney and Melbourne?",
    "Explain in simple terms how a refrigerator keeps food cold.",
    "Write a haiku about the first snow of winter.",
    "What are three good habits for writing maintainable code?",
    "Why is the sky blue during the day and red at sunset?",
    "Give me a short recipe for a vegetable soup that takes less than thirty minutes.",
    "What is the difference between a virus and a bacterium?",
    "List five countries in South America and one famous landmark in each.",
    "How do I convert a temperature from Celsius to Fahrenheit? Show an example.",
    "Suggest a name for a small bakery that specializes in sourdough bread.",
    "What does a compiler do, and how is it different from an interpreter?",
    "Describe the rules of chess for how a knight moves.",
    "Why do cats purr? Give two possible explanations.",
    "Write a polite email asking a colleague to review my pull request by Friday.",
];

/// Passages to summarize, 300–600 words each (checked by a test).
const LONG: [&str; 6] = [
    "Lighthouses were once the most important navigation aids along dangerous coasts. Before \
     electric light, keepers tended wick lamps that burned whale oil, colza oil, and later \
     kerosene, trimming the wicks through the night so the flame would not smoke and dim the \
     lens. The keeper's life was lonely and demanding. Many stations stood on bare rocks miles \
     from shore, reachable only when the sea was calm, and supply boats could be delayed for \
     weeks by storms. Families sometimes lived at the station, and children learned to row, \
     fish, and read the weather long before they learned arithmetic. The great change in \
     lighthouse technology came with the Fresnel lens, introduced in France in the 1820s. By \
     arranging concentric rings of glass prisms around a single flame, the lens gathered light \
     that would otherwise escape upward or downward and bent it into a horizontal beam. A lamp \
     that could barely be seen a few miles away became visible at twenty miles or more. Lenses \
     were graded by order, from the enormous first-order lenses used on major coastal lights to \
     the small sixth-order lenses placed on harbor piers. Each light was also given a \
     characteristic, a pattern of flashes and eclipses, so that a navigator who saw a light at \
     night could identify it from a printed list and know exactly where the ship was. Fog was \
     the keeper's other enemy. When visibility dropped, light was useless, and stations relied \
     on bells, whistles, and eventually powerful compressed-air horns. Keepers had to start the \
     engines at the first sign of fog and keep them running, sometimes for days, while \
     recording every hour in the station log. In the twentieth century, electrification and \
     automation made the keeper unnecessary. Timers, photocells, and remote monitoring replaced \
     the nightly routine, and by the end of the century nearly every lighthouse in the world \
     was unmanned. Satellite navigation has since reduced the importance of the lights \
     themselves, although mariners still value them as an independent check when electronics \
     fail. Today many lighthouses survive as museums, guest houses, or protected landmarks, \
     maintained by volunteer societies who raise money to repair towers battered by salt wind. \
     Visitors climb the spiral stairs, look through the old lenses, and read the logbooks in \
     which keepers described shipwrecks, rescues, and the slow passing of uneventful nights.",
    "Bread rises because living yeast cells feed on the sugars in flour and release carbon \
     dioxide gas. When flour is mixed with water, two proteins, glutenin and gliadin, bond to \
     form gluten, an elastic network that traps the gas in countless small bubbles. Kneading \
     stretches and aligns this network, making the dough smooth and strong enough to hold its \
     shape as it expands. The first rise, often called bulk fermentation, lets the yeast \
     multiply and produce both gas and flavor. Slower fermentation at cooler temperatures gives \
     the yeast and the bacteria in the dough more time to create organic acids and aromatic \
     compounds, which is why many bakers leave their dough in a refrigerator overnight. \
     Sourdough takes this further. Instead of commercial yeast, the baker uses a starter, a \
     mixture of flour and water that has been fed regularly for days, months, or even decades. \
     The starter contains wild yeasts and lactic acid bacteria that live together in a stable \
     community. The bacteria produce lactic and acetic acids, giving sourdough its tang and \
     helping the bread stay fresh longer, while the wild yeasts do most of the leavening. \
     Because this process is slower and less predictable than baking with packaged yeast, \
     sourdough bakers learn to judge their dough by feel, smell, and appearance rather than by \
     the clock alone. After shaping, the dough goes through a final rise called proofing. If it \
     is underproofed, the loaf will burst unevenly in the oven and have a dense crumb; if it is \
     overproofed, the gluten weakens, the bubbles collapse, and the loaf spreads flat. Bakers \
     test readiness by pressing the dough gently with a finger: a slow, partial spring back \
     means it is ready. In the oven, a final burst of expansion called oven spring occurs as \
     the trapped gas heats and the remaining yeast works furiously before the heat kills it. \
     Steam in the first minutes of baking keeps the crust soft so the loaf can expand fully; \
     later, dry heat lets the crust brown through the Maillard reaction, in which sugars and \
     amino acids combine to create hundreds of flavor compounds. Finally, the bread must cool \
     before slicing, because the crumb is still setting as moisture moves outward from the \
     center. Cutting too early releases steam and leaves the interior gummy, a mistake almost \
     every beginner makes at least once.",
    "Minutes of the Riverbend town council, regular meeting. The chair opened the meeting at \
     seven in the evening with six of seven members present; the member for the north ward \
     sent apologies. The minutes of the previous meeting were approved without changes. The \
     first item was the proposal to replace the pedestrian bridge over Mill Creek. The town \
     engineer reported that the inspection in the spring found corrosion in two of the four \
     steel supports and recommended closing the bridge to bicycles immediately. Three \
     contractors submitted bids for a replacement, ranging from four hundred and ten thousand \
     to five hundred and eighty thousand. Several residents spoke during public comment. A \
     shop owner on Front Street said the bridge brings customers from the new housing on the \
     east bank and asked that construction avoid the summer season. A parent asked whether a \
     temporary crossing could be provided so children can still walk to the elementary school. \
     The engineer said a temporary crossing would add about forty thousand to the cost. After \
     discussion, the council voted five to one to accept the lowest qualified bid, to schedule \
     construction from September to November, and to fund a temporary crossing from the \
     reserve account. The second item was the library's request to extend opening hours on \
     weekday evenings. The head librarian presented usage figures showing that evening visits \
     had risen by a third since the study rooms were renovated, mostly by students and people \
     working during the day. Extending hours until nine would require one additional part-time \
     staff member. One member questioned whether the increase would last beyond the exam \
     season; the librarian offered a six-month trial with a report at the end. The council \
     approved the trial unanimously. The third item concerned complaints about late-night \
     noise from delivery trucks at the grocery warehouse on Elm Road. The council asked staff \
     to meet with the warehouse management and report back with options, including \
     restricted delivery hours and a sound barrier along the residential boundary. Under other \
     business, the treasurer noted that property tax collections were slightly ahead of \
     forecast and that the audit for the previous year would be presented next month. The \
     chair reminded members that the annual budget workshop will be held on the first Saturday \
     of next month and that residents are welcome to attend. The meeting was adjourned at \
     nine fifteen.",
    "Incident report: checkout service outage. On Tuesday, between 14:02 and 14:49 UTC, \
     roughly a third of checkout attempts on the web store failed with a timeout. Mobile \
     checkouts were not affected. The incident began shortly after a routine deployment of \
     the pricing service, which introduced a new cache for currency conversion rates. The new \
     code populated the cache lazily, on the first request for each currency pair. Under \
     normal traffic this worked well in testing, but in production the deployment coincided \
     with a regional sale that tripled traffic for two currencies. When the cache was empty, \
     hundreds of concurrent requests for the same pair each called the external exchange-rate \
     provider at once. The provider began rate limiting our account, returning errors after a \
     delay of several seconds, and the pricing service retried each failed call three times \
     with no jitter. Checkout requests waited on pricing, exhausted their connection pool, and \
     timed out. Mobile clients were spared because they use a prefetched price list that is \
     refreshed every ten minutes. The on-call engineer was paged at 14:07 by the checkout \
     error-rate alert. Initial investigation focused on the checkout service itself, since \
     its dashboards showed the errors; it took until 14:31 to connect the timeouts to the \
     pricing deployment because the pricing service's own error rate looked normal, its \
     retries hiding most failures. The deployment was rolled back at 14:38 and checkouts \
     recovered fully by 14:49. No orders were charged twice, and no data was lost. Customers \
     who saw errors were able to complete their purchases afterwards, although the sale \
     conversion rate during the window dropped by an estimated twelve percent. Several \
     changes are planned. The cache will be warmed at start-up for all supported currency \
     pairs and refreshed in the background instead of on demand. Concurrent misses for the \
     same key will be coalesced so that only one call reaches the provider. Retries will use \
     exponential backoff with jitter and a retry budget. The pricing service will expose the \
     rate of failed provider calls, including those later retried, as a dashboard metric with \
     its own alert. Finally, deployments of services on the checkout path will be paused \
     during announced sales unless they fix an active problem.",
    "The old clockmaker's shop stood at the corner where the tram turned toward the river, and \
     for forty years its window had shown the same arrangement: a brass carriage clock, a \
     tall walnut regulator, and a small wooden cuckoo clock whose bird had long ago stopped \
     appearing. Children pressed their noses to the glass on the way to school, daring each \
     other to wait for the cuckoo. It never came. Mara inherited the shop the winter her \
     grandfather died. She was a software engineer who had not held a screwdriver smaller \
     than the ones in a laptop repair kit, and she planned to sell the building by spring. \
     But when she unlocked the door for the first time, the shop was full of ticking, dozens \
     of clocks all slightly out of step, and she found she could not bring herself to let \
     them run down. She began winding them each morning before work. Then she began reading \
     her grandfather's notebooks, which were filled with careful drawings of escapements and \
     wheel trains, and notes in a small slanted hand: this one loses two minutes a week in \
     cold weather; the mainspring in that one was replaced in the year of the flood. By \
     February she had bought a set of jeweler's screwdrivers and a loupe. Her first repair, a \
     simple alarm clock, took her three weekends and ended with a spring flying across the \
     room. Her second went better. Customers started to knock on the door, assuming the shop \
     had reopened, and rather than turn them away she wrote down their names and promised to \
     try. In April she opened the cuckoo clock from the window. The problem was tiny: a wire \
     linking the bird to the striking train had slipped from its hook, probably decades ago. \
     She bent it back into place with tweezers, wound the weights, and set the hands to a \
     minute before the hour. When the bird finally swung out and called, she laughed out loud \
     in the empty shop. The next morning two children stood outside the window at eight \
     o'clock, staring in disbelief as the little door opened. Mara took the for-sale sign out \
     of the window that afternoon.",
    "Urban flooding is rarely caused by rivers alone. In most cities, the larger share of \
     flood damage comes from rain that falls directly on streets, roofs, and parking lots and \
     cannot soak into the ground. Natural soil and vegetation absorb much of a typical \
     rainstorm, releasing water slowly to streams and aquifers. Pavement and buildings, by \
     contrast, send nearly all of it into gutters and storm drains within minutes. Drainage \
     networks designed decades ago for smaller populations and milder storms are now \
     regularly overwhelmed. When pipes fill, water backs up into basements and low-lying \
     roads, and in older cities where sewage and stormwater share the same pipes, untreated \
     sewage overflows into rivers. Engineers have traditionally responded by building bigger \
     pipes and underground storage tunnels. These projects work, but they are expensive, take \
     many years to build, and simply move the water faster to somewhere else. A different \
     approach, often called green infrastructure or the sponge city, tries to slow water down \
     where it falls. Rain gardens are shallow planted basins that collect runoff from roofs \
     and streets and let it soak in over a day or two. Permeable pavement allows water to pass \
     through gaps or porous material into a gravel layer beneath. Green roofs hold rain in \
     soil and plants, releasing part of it through evaporation. Wider tree pits, restored \
     wetlands, and parks designed to flood safely during extreme storms add capacity at the \
     scale of neighborhoods. Each measure handles only a small amount of water, but thousands \
     of them spread across a city can reduce peak flows significantly, and they bring other \
     benefits: cooler streets in summer, cleaner water, and more green space. The challenges \
     are practical. Green infrastructure needs maintenance, such as clearing sediment and \
     replacing plants, and responsibility is often split between city departments that are \
     not used to working together. Its performance is harder to guarantee than that of a \
     pipe with a known diameter. Most cities therefore combine both approaches, using pipes \
     and tunnels for the heaviest storms and green measures to reduce how often those systems \
     are pushed to their limits.",
];

/// How many distinct prompts there are.
pub const PROMPT_COUNT: usize = SHORT.len() + LONG.len();

/// The prompt at `index` (`0..PROMPT_COUNT`; wraps around beyond): the short questions
/// first, then the passages, each passage behind its summarization instruction.
pub fn prompt(index: usize) -> String {
    let index = index % PROMPT_COUNT;
    match SHORT.get(index) {
        Some(q) => (*q).to_string(),
        None => format!("{SUMMARIZE}{}", LONG[index - SHORT.len()]),
    }
}

/// Which prompt request number `request` (0, 1, 2, …) uses under `seed`. Requests walk
/// through seeded permutations of the whole set, one fresh permutation per round of
/// `PROMPT_COUNT` requests, so every prompt is used equally often and any prefix of the
/// sequence has the same mix of short and long prompts on every server.
pub fn prompt_index(seed: u64, request: u64) -> usize {
    permuted(seed, request, PROMPT_COUNT)
}

/// The short question that user message number `n` (0, 1, 2, …) of the multi-turn mode
/// asks under `seed`: follow-ups in a chat are short, so the turns measure how the history
/// is reused rather than the prefill of long new text. Walks seeded permutations of the
/// questions like [`prompt_index`].
pub fn question(seed: u64, n: u64) -> &'static str {
    SHORT[permuted(seed, n, SHORT.len())]
}

/// Item `i` of an endless sequence of seeded permutations of `0..len`, one per round of
/// `len` items.
fn permuted(seed: u64, i: u64, len: usize) -> usize {
    let n = len as u64;
    let round = i / n;
    let mut order: Vec<usize> = (0..len).collect();
    // One generator per round: the order of round r does not depend on how many items
    // earlier rounds had, which keeps this a pure function.
    let mut rng = SplitMix64(seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order[(i % n) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_are_300_to_600_words_and_questions_are_short() {
        for (i, p) in LONG.iter().enumerate() {
            let words = p.split_whitespace().count();
            assert!((300..=600).contains(&words), "passage {i} has {words} words");
        }
        for q in SHORT {
            assert!(q.split_whitespace().count() < 30, "{q}");
        }
        assert_eq!(PROMPT_COUNT, 20);
    }

    #[test]
    fn long_prompts_carry_the_instruction() {
        assert!(prompt(SHORT.len()).starts_with(SUMMARIZE));
        assert_eq!(prompt(0), SHORT[0]);
        assert_eq!(prompt(PROMPT_COUNT), prompt(0));
    }

    #[test]
    fn each_round_is_a_permutation() {
        for round in 0..3u64 {
            let mut seen: Vec<usize> =
                (0..PROMPT_COUNT as u64).map(|i| prompt_index(7, round * PROMPT_COUNT as u64 + i)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..PROMPT_COUNT).collect::<Vec<_>>());
        }
    }

    #[test]
    fn order_is_fixed_by_the_seed() {
        let a: Vec<usize> = (0..40).map(|i| prompt_index(1, i)).collect();
        let b: Vec<usize> = (0..40).map(|i| prompt_index(1, i)).collect();
        let c: Vec<usize> = (0..40).map(|i| prompt_index(2, i)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Rounds differ from one another too.
        assert_ne!(a[..20], a[20..]);
    }

    #[test]
    fn questions_walk_permutations_of_the_short_ones() {
        let mut round: Vec<&str> = (0..SHORT.len() as u64).map(|n| question(5, n)).collect();
        round.sort_unstable();
        let mut all = SHORT.to_vec();
        all.sort_unstable();
        assert_eq!(round, all);
        assert_eq!(question(5, 3), question(5, 3));
    }
}
