"""Names shared with Asterisk, defined once.

``tests/test_asterisk_conf.py`` checks that ``asterisk_conf/`` uses these exact
names, so the dialplan and the code cannot drift apart.
"""

# Channel variables set by the voice face before a transfer. The ``__`` prefix
# makes Asterisk inherit them into the agent's channel (and beyond).
VAR_SESSION = "IVR_SESSION"
VAR_SUMMARY = "IVR_SUMMARY"
VAR_LANGUAGE = "IVR_LANGUAGE"
VAR_REASON = "IVR_REASON"
INHERIT = "__"

# Queue priority is read by Queue() from this channel variable only.
VAR_QUEUE_PRIO = "QUEUE_PRIO"

# Dialplan contexts in asterisk_conf/extensions.conf.
CONTEXT_SERVICE = "ivr-service"       # service number entry: AGI to the server
CONTEXT_FALLBACK = "ivr-fallback"     # AGI failed: straight to an agent queue
CONTEXT_QUEUE = "ivr-queue"           # a live call moved to a queue (AMI Redirect)
CONTEXT_CALLBACK = "ivr-callback"     # callbacks originate into this context
CONTEXT_AGENTS = "ivr-agents"         # agent interfaces (Local/NAME@ivr-agents)
CONTEXT_SERVICE_EAGI = "ivr-service-eagi"  # process AGI with speech: EAGI(ivr_eagi.py,...)

# Default queue a call lands in when the flow or the server fails.
FALLBACK_QUEUE = "support"

# The process-AGI entry script installed in agi-bin.
AGI_SCRIPT = "ivr_agi.py"
EAGI_SCRIPT = "ivr_eagi.py"

# Default network ports.
DEFAULT_AGI_PORT = 4573
DEFAULT_HTTP_PORT = 8080
DEFAULT_AUDIOSOCKET_PORT = 9092

# Directory under Asterisk's sounds directory where prompts are rendered.
SOUNDS_SUBDIR = "ivr"

# Set by the server when the AGI ends: completed, transfer, hangup, failed,
# error, noflow. The dialplan sends "error" and "noflow" (and an AGI that
# could not reach the server at all: AGISTATUS=FAILURE) to CONTEXT_FALLBACK.
VAR_RESULT = "IVR_RESULT"

# Asterisk modules speech needs (asterisk_conf/modules.conf): AudioSocket for
# FastAGI calls (the app and its resource), res_agi for AGI/EAGI itself.
SPEECH_MODULES = ("res_agi.so", "res_audiosocket.so", "app_audiosocket.so")

# Asterisk's own variables read after Queue().
VAR_QUEUESTATUS = "QUEUESTATUS"
VAR_ANSWEREDTIME = "ANSWEREDTIME"
VAR_DIALSTATUS = "DIALSTATUS"

# Played when a menu starts collecting after a key interrupted a prompt (core sounds).
SILENCE_FILE = "silence/1"

# A live call moved into a queue from the visual IVR (AMI Redirect to
# CONTEXT_QUEUE): the queue and its priority, set on the channel first.
VAR_QUEUE = "IVR_QUEUE"
VAR_PRIO = "IVR_PRIO"

# ---- agent handoff and callbacks (asterisk_conf/extensions.conf, queues.conf)
# The queues' ``context`` (queues.conf): a caller waiting in Queue() who presses
# one of its extensions (1: a callback instead of waiting) leaves the queue and
# the AGI sees CONTEXT/EXTEN point here.
CONTEXT_QUEUE_EXIT = "ivr-queue-exit"
QUEUE_EXIT_CALLBACK_KEY = "1"
# Callbacks: the only context that dials an outside number (a strict pattern).
CONTEXT_CALLBACK_OUT = "ivr-callback-out"
# Extensions of CONTEXT_CALLBACK: the customer answered (join the queue), or
# the agent answered (dial the customer).
EXTEN_CALLBACK_CUSTOMER = "customer"
EXTEN_CALLBACK_AGENT = "agent"
# Channel variables an Originate sets for the callback dialplan.
VAR_CALLBACK = "IVR_CALLBACK"                # request id (inherited)
VAR_CALLBACK_NUMBER = "IVR_CALLBACK_NUMBER"  # digits only
VAR_CALLBACK_QUEUE = "IVR_CALLBACK_QUEUE"
VAR_CALLBACK_PRIO = "IVR_CALLBACK_PRIO"
VAR_CALLBACK_DIAL = "IVR_CALLBACK_DIAL"      # one dial (the Originate's ChannelId; inherited)
# AstDB family where the callback dialplan notes each dial: <family>/<dial id> =
# DIALLING, then the DIALSTATUS (ANSWER, BUSY ...); read back with DBGet.
ASTDB_CALLBACK = "ivr-callback"
# UserEvent the callback dialplan raises after dialling the customer (agent-first).
USEREVENT_CALLBACK_DIAL = "IvrCallbackDial"
# Prompts Asterisk plays by itself while a caller waits in a queue.
SOUND_QUEUE_CALLBACK_OFFER = "ivr/queue-callback-offer"
SOUND_CALLBACK_HELLO = "ivr/callback-hello"
